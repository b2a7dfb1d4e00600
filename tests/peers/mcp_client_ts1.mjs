// MCP client test peer on the official TypeScript SDK 1.x (@modelcontextprotocol/sdk, pinned in package.json).
// Speaks the 2025-11-25 revision (initialize handshake, Mcp-Session-Id) over streamable HTTP.
//
//   node mcp_client_ts1.mjs --url URL --token T --call TOOL --args JSON
//        [--timeout-ms N] [--progress] [--retry-after-error SECONDS]
//
// --token           sent as `Authorization: Bearer <T>` on every HTTP request (requestInit.headers)
// --timeout-ms N    callTool option {timeout: N} (default: SDK default, 60000 ms). On timeout the SDK
//                   rejects with McpError -32001 "Request timed out" and POSTs notifications/cancelled
//                   {requestId, reason}; this script stays alive ~2 s after the error so that POST goes out.
// --progress        callTool options {onprogress, resetTimeoutOnProgress: true}: the SDK then puts
//                   params._meta.progressToken (= the JSON-RPC id) in the tools/call request; every
//                   notifications/progress is printed to stderr as {"progress_notification": {...}}.
// --retry-after-error S  if the call result has isError true, wait S seconds and call the same tool
//                   with the same arguments once more (both results land in `results`).
//
// stdout: one JSON object {protocol_version, result, error, results}
//   result  = the last call result (or null), error = {code, message} of a thrown error (or null),
//   results = every call result in order.
// stderr: JSON lines (progress notifications, SDK onerror reports, cancellation sends).
// Exit: 0 = non-error result, 1 = result with isError true, 2 = thrown error (connect or call).
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string', default: 'http://127.0.0.1:8765/mcp' },
    token: { type: 'string' },
    call: { type: 'string' },
    args: { type: 'string', default: '{}' },
    'timeout-ms': { type: 'string' },
    progress: { type: 'boolean', default: false },
    'retry-after-error': { type: 'string' },
  },
});
if (!opt.call) {
  console.error('usage: node mcp_client_ts1.mjs --url URL --token T --call TOOL --args JSON '
    + '[--timeout-ms N] [--progress] [--retry-after-error SECONDS]');
  process.exit(64);
}

const log = (obj) => console.error(JSON.stringify(obj));
const errInfo = (e) => {
  const message = e?.message ?? String(e);
  const cause = e?.cause?.code ?? e?.cause?.message;
  return { code: e?.code ?? null, message: cause && !message.includes(cause) ? `${message}: ${cause}` : message };
};

const toolArgs = JSON.parse(opt.args);
const headers = opt.token ? { Authorization: `Bearer ${opt.token}` } : {};
const transport = new StreamableHTTPClientTransport(new URL(opt.url), { requestInit: { headers } });

// Track the notifications/cancelled POSTs the SDK fires (fire-and-forget) so we can wait for them.
const pendingCancels = [];
const origSend = transport.send.bind(transport);
transport.send = (message, options) => {
  const p = origSend(message, options);
  if (message?.method === 'notifications/cancelled') {
    pendingCancels.push(p.then(
      () => log({ sent: 'notifications/cancelled', params: message.params }),
      (e) => log({ send_failed: 'notifications/cancelled', params: message.params, error: errInfo(e) }),
    ));
  }
  return p;
};

const client = new Client({ name: 'portcullis-test-ts1', version: '1.0.0' });
client.onerror = (e) => log({ sdk_error: errInfo(e) });

const callOptions = {};
if (opt['timeout-ms'] !== undefined) callOptions.timeout = Number(opt['timeout-ms']);
if (opt.progress) {
  callOptions.onprogress = (params) => log({ progress_notification: params });
  callOptions.resetTimeoutOnProgress = true;
}

const results = [];
let result = null;
let error = null;
let connected = false;
try {
  await client.connect(transport);
  connected = true;
  const call = () => client.callTool({ name: opt.call, arguments: toolArgs }, undefined, callOptions);
  result = await call();
  results.push(result);
  if (result.isError && opt['retry-after-error'] !== undefined) {
    await sleep(Number(opt['retry-after-error']) * 1000);
    result = await call();
    results.push(result);
  }
} catch (e) {
  error = errInfo(e);
  if (connected) {
    // A timed-out (or aborted) request makes the SDK send notifications/cancelled as a separate
    // POST; the SDK does not await it, and close() would abort it. Give it time to go out.
    await sleep(2000);
    await Promise.race([Promise.allSettled(pendingCancels), sleep(3000)]);
  }
}

const out = {
  protocol_version: transport.protocolVersion ?? null,
  result,
  error,
  results,
};
process.stdout.write(JSON.stringify(out, null, 2) + '\n');
await client.close().catch(() => {});
process.exit(error ? 2 : result?.isError ? 1 : 0);
