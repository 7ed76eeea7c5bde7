// A reader of evosync's catalog that opens databases the way kromosynth-evoruns does: better-sqlite3 with
// `readonly: true`, then `pragma journal_mode = WAL`, one connection per run kept open across requests, and a run
// found by `stat(root/NAME)`. Driven by JSON lines on stdin, one answer line each on stdout, so a test can keep
// connections open across pushes and time every answer.
//   {"op":"open","run":R,"db":"genomes.sqlite"}     -> {"ok":true} | {"ok":false,"error":...}
//   {"op":"count","run":R,"db":D,"table":T}         -> {"ok":true,"count":N}
//   {"op":"count",...,"from":ID}                    -> {"ok":true,"count":N}: the rows whose id >= ID (an index range,
//                                                      cheap enough to poll while a push runs)
//   {"op":"genome","run":R,"id":ID}                 -> {"ok":true,"json":...} (data gunzipped, as /genome/:ulid)
//   {"op":"write","run":R,"db":D}                   -> {"ok":false,...}: a reader must never write
//   {"op":"lookup","run":R}                         -> {"ok":true,"found":bool,"micros":N}: stat(root/NAME)
//   {"op":"find","run":R}                           -> {"ok":true,"found":bool,"micros":N}: what the reader did before
//                                                      the catalog: stat(root/NAME), else a walk of the whole tree
//   {"op":"files","run":R,"dir":"analysisResults"}  -> {"ok":true,"files":[...]}
"use strict";
const fs = require("fs");
const fsp = require("fs/promises");
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
    case "count": {
      const db = connection(request.run, request.db);
      if (request.from === undefined) return { count: db.prepare(`SELECT count(*) AS n FROM ${request.table}`).get().n };
      return { count: db.prepare(`SELECT count(*) AS n FROM ${request.table} WHERE id >= ?`).get(request.from).n };
    }
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
    case "find":
      return find(request.run);
    case "files":
      return { files: fs.readdirSync(path.join(root, request.run, request.dir)).sort() };
    default:
      throw new Error(`unknown op ${request.op}`);
  }
}

// A run by name as kromosynth-evoruns finds one: `stat(root/NAME)`, else every run folder under the root, found by
// walking it with `readdir` (a folder named like a run, `^[0-9A-Z]{26}_`, is not walked into), then the one named.
async function find(run) {
  const started = process.hrtime.bigint();
  let found = false;
  try {
    found = (await fsp.stat(path.join(root, run))).isDirectory();
  } catch (e) {}
  if (!found) {
    const runs = [];
    const walk = async (folder) => {
      for (const entry of await fsp.readdir(folder, { withFileTypes: true })) {
        if (!entry.isDirectory()) continue;
        if (/^[0-9A-Z]{26}_/.test(entry.name)) runs.push({ name: entry.name, path: path.join(folder, entry.name) });
        else await walk(path.join(folder, entry.name));
      }
    };
    await walk(root);
    found = runs.some((r) => r.name === run);
  }
  return { found, micros: Number(process.hrtime.bigint() - started) / 1000 };
}

// One request at a time: the driver waits for each answer, so answers that take a promise stay in order.
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  Promise.resolve()
    .then(() => answer(JSON.parse(line)))
    .then(
      (answered) => ({ ok: true, ...answered }),
      (error) => ({ ok: false, error: String(error.message || error) }),
    )
    .then((reply) => process.stdout.write(JSON.stringify(reply) + "\n"));
});
