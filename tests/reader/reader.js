// A reader of evosync's catalog that opens databases the way kromosynth-evoruns does: better-sqlite3 with
// `readonly: true`, then `pragma journal_mode = WAL`, one connection per run kept open across requests, and a run
// found by `stat(root/NAME)`. Driven by JSON lines on stdin, one answer line each on stdout, so a test can keep
// connections open across pushes and time every answer.
//   {"op":"open","run":R,"db":"genomes.sqlite"}     -> {"ok":true} | {"ok":false,"error":...}
//   {"op":"count","run":R,"db":D,"table":T}         -> {"ok":true,"count":N}
//   {"op":"genome","run":R,"id":ID}                 -> {"ok":true,"json":...} (data gunzipped, as /genome/:ulid)
//   {"op":"write","run":R,"db":D}                   -> {"ok":false,...}: a reader must never write
//   {"op":"lookup","run":R}                         -> {"ok":true,"found":bool,"micros":N}: stat(root/NAME)
//   {"op":"files","run":R,"dir":"analysisResults"}  -> {"ok":true,"files":[...]}
"use strict";
const fs = require("fs");
const path = require("path");
const zlib = require("zlib");
const readline = require("readline");
const Database = require("better-sqlite3");

const root = process.argv[2];
const open = new Map();

function connection(run, db) {
  const key = `${run}/${db}`;
  if (!open.has(key)) {
    const conn = new Database(path.join(root, run, db), { readonly: true, fileMustExist: true });
    conn.pragma("journal_mode = WAL");
    open.set(key, conn);
  }
  return open.get(key);
}

function answer(request) {
  switch (request.op) {
    case "open":
      connection(request.run, request.db);
      return {};
    case "count":
      return { count: connection(request.run, request.db).prepare(`SELECT count(*) AS n FROM ${request.table}`).get().n };
    case "genome": {
      const row = connection(request.run, "genomes.sqlite").prepare("SELECT data FROM genomes WHERE id = ?").get(request.id);
      return { json: row ? JSON.parse(zlib.gunzipSync(row.data).toString()) : null };
    }
    case "write":
      connection(request.run, request.db).prepare("DELETE FROM metadata").run();
      return {};
    case "lookup": {
      const started = process.hrtime.bigint();
      let found = false;
      try {
        found = fs.statSync(path.join(root, request.run)).isDirectory();
      } catch (e) {}
      return { found, micros: Number(process.hrtime.bigint() - started) / 1000 };
    }
    case "files":
      return { files: fs.readdirSync(path.join(root, request.run, request.dir)).sort() };
    default:
      throw new Error(`unknown op ${request.op}`);
  }
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  let reply;
  try {
    reply = { ok: true, ...answer(JSON.parse(line)) };
  } catch (error) {
    reply = { ok: false, error: String(error.message || error) };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
});
