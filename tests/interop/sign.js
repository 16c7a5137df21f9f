// Signs TokenRequests with real ably-js createTokenRequest.
// stdin: JSON array of {key, params}; stdout: JSON array of TokenRequests.
'use strict';
const Ably = require('ably');

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const cases = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const out = [];
  for (const c of cases) {
    const rest = new Ably.Rest({ key: c.key, autoConnect: false });
    try {
      out.push(await rest.auth.createTokenRequest(c.params, { key: c.key }));
    } catch (err) {
      out.push({ error: String(err && err.message) });
    }
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
