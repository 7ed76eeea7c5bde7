// Uploads one analysis file the way the workers' sync manager does, several times, and prints what each attempt got:
// one JSON line per attempt, {"status": N, "body": "..."} or {"error": "...", "code": "..."}.
//
// The request is built as the sync manager builds it: the multipart body by hand (boundary ----SyncBoundary<millis>,
// a `subdir` part, then the `file` part as application/gzip), Content-Length, X-Sync-API-Key, Node's own
// http.request (https.request for an https URL; NODE_EXTRA_CA_CERTS names the test's CA) with a 30 s timeout, the whole body written with req.write() and req.end(), then the answer read.
// Like the sync manager, it listens for `error` on the request only (never on the response), so an error event the
// request does not own ends this process with a non-zero exit: the test sees that as a failure.
//
// Usage: node upload.js URL KEY SUBDIR NAME BYTES TIMES
'use strict';

const http = require('http');
const https = require('https');
const crypto = require('crypto');
const zlib = require('zlib');

const [url, apiKey, subdir, fileName, bytes, times] = process.argv.slice(2);

function send(method, target, body, key, extraHeaders) {
  return new Promise((resolve, reject) => {
    const parsed = new URL(target);
    const lib = parsed.protocol === 'https:' ? https : http;
    const headers = { ...extraHeaders, 'X-Sync-API-Key': key, 'Content-Length': Buffer.byteLength(body) };
    const req = lib.request(
      { hostname: parsed.hostname, port: parsed.port, path: parsed.pathname + parsed.search, method, headers,
        timeout: 30000 },
      (res) => {
        let text = '';
        res.on('data', (chunk) => { text += chunk; });
        res.on('end', () => {
          if (res.statusCode >= 200 && res.statusCode < 300) {
            resolve({ status: res.statusCode, body: text });
          } else {
            const error = new Error(`HTTP ${res.statusCode}: ${text}`);
            error.statusCode = res.statusCode;
            error.body = text;
            reject(error);
          }
        });
      });
    req.on('error', reject);
    req.on('timeout', () => {
      req.destroy();
      reject(new Error('Request timeout'));
    });
    req.write(body);
    req.end();
  });
}

function multipart(content) {
  const boundary = `----SyncBoundary${Date.now()}`;
  const field = Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="subdir"\r\n\r\n${subdir}\r\n`);
  const head = Buffer.from(
    `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${fileName}"\r\n` +
    'Content-Type: application/gzip\r\n\r\n');
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
  return { boundary, body: Buffer.concat([field, head, content, tail]) };
}

async function main() {
  // A real gzip file of about BYTES: random bytes do not compress.
  const content = zlib.gzipSync(crypto.randomBytes(Number(bytes)), { level: 1 });
  for (let attempt = 0; attempt < Number(times); attempt++) {
    const { boundary, body } = multipart(content);
    try {
      const answer = await send('POST', url, body, apiKey,
        { 'Content-Type': `multipart/form-data; boundary=${boundary}` });
      console.log(JSON.stringify(answer));
    } catch (error) {
      if (error.statusCode) {
        console.log(JSON.stringify({ status: error.statusCode, body: error.body }));
      } else {
        console.log(JSON.stringify({ error: error.message, code: error.code || null }));
      }
    }
  }
  // Time for a late error event (a reset after the answer) to surface and end the process.
  await new Promise((resolve) => setTimeout(resolve, 500));
}

main();
