// MCP client test peer on the official TypeScript SDK 2.x (@modelcontextprotocol/client, pinned in
// package.json), pinned to protocol revision 2026-07-28 (server/discover, no initialize, no session;
// per-request `_meta` envelope; elicitation arrives embedded in an `input_required` tools/call result).
//
//   node mcp_client_ts2.mjs --url URL --token T --call TOOL --args JSON [--approve-url URL] [--decline]
//
// --token        sent as `Authorization: Bearer <T>` on every HTTP request (requestInit.headers)
// --approve-url  on each elicitation, POST this URL first (e.g. the test OP's /approve/latest hook:
//                the user approves on their device), then answer the elicitation
// --decline      answer every elicitation with {action: "decline"} instead of "accept"
//
// The client declares capabilities {elicitation: {form: {}, url: {}}}; the SDK sends them on every
// request in params._meta["io.modelcontextprotocol/clientCapabilities"]. The SDK's multi-round-trip
// driver (default maxRounds 10) calls the elicitation handler for each embedded elicitation/create
// and retries tools/call with inputResponses + the echoed requestState.
// The handler prints {"elicitation": <params>, "key": <inputRequests key>} to stderr, and
// {"approve": {url, status, body}} after the POST. Accept answers: URL mode -> {action: "accept"};
// form mode -> {action: "accept", content} with content filled from requestedSchema
// (booleans true; other properties their default, else the first enum value, else 0 / [] / "").
//
// stdout: one JSON object {protocol_version, result, error, results} (same shape as the other peers;
//   `elicitations` is added: the params of every elicitation the handler saw).
// Exit: 0 = non-error result, 1 = result with isError true, 2 = thrown error.
import { parseArgs } from 'node:util';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string', default: 'http://127.0.0.1:8765/mcp' },
    token: { type: 'string' },
    call: { type: 'string' },
    args: { type: 'string', default: '{}' },
    'approve-url': { type: 'string' },
    decline: { type: 'boolean', default: false },
  },
});
if (!opt.call) {
  console.error('usage: node mcp_client_ts2.mjs --url URL --token T --call TOOL --args JSON '
    + '[--approve-url URL] [--decline]');
  process.exit(64);
}

const PROTOCOL = '2026-07-28';
const log = (obj) => console.error(JSON.stringify(obj));
const errInfo = (e) => {
  const message = e?.message ?? String(e);
  const cause = e?.cause?.code ?? e?.cause?.message;
  return { code: e?.code ?? null, message: cause && !message.includes(cause) ? `${message}: ${cause}` : message };
};

function fillForm(schema) {
  const content = {};
  for (const [name, prop] of Object.entries(schema?.properties ?? {})) {
    if (prop.type === 'boolean') content[name] = true; // the user approves / confirms
    else if (prop.default !== undefined) content[name] = prop.default;
    else if (Array.isArray(prop.enum) && prop.enum.length) content[name] = prop.enum[0];
    else if (Array.isArray(prop.oneOf) && prop.oneOf.length) content[name] = prop.oneOf[0].const;
    else if (prop.type === 'number' || prop.type === 'integer') content[name] = prop.minimum ?? 0;
    else if (prop.type === 'array') content[name] = [];
    else content[name] = '';
  }
  return content;
}

const toolArgs = JSON.parse(opt.args);
const headers = opt.token ? { Authorization: `Bearer ${opt.token}` } : {};
const transport = new StreamableHTTPClientTransport(new URL(opt.url), { requestInit: { headers } });

const client = new Client(
  { name: 'portcullis-test-ts2', version: '1.0.0' },
  {
    capabilities: { elicitation: { form: {}, url: {} } },
    versionNegotiation: { mode: { pin: PROTOCOL } },
  },
);
client.onerror = (e) => log({ sdk_error: errInfo(e) });

const elicitations = [];
client.setRequestHandler('elicitation/create', async (request, ctx) => {
  const params = request.params;
  elicitations.push(params);
  log({ elicitation: params, key: ctx?.mcpReq?.id ?? null });
  if (opt['approve-url']) {
    const res = await fetch(opt['approve-url'], { method: 'POST' });
    log({ approve: { url: opt['approve-url'], status: res.status, body: await res.text() } });
  }
  if (opt.decline) return { action: 'decline' };
  if (params.mode === 'url') return { action: 'accept' };
  return { action: 'accept', content: fillForm(params.requestedSchema) };
});

const results = [];
let result = null;
let error = null;
try {
  await client.connect(transport);
  result = await client.callTool({ name: opt.call, arguments: toolArgs });
  results.push(result);
} catch (e) {
  error = errInfo(e);
}

const out = {
  protocol_version: client.getNegotiatedProtocolVersion() ?? null,
  result,
  error,
  results,
  elicitations,
};
process.stdout.write(JSON.stringify(out, null, 2) + '\n');
await client.close().catch(() => {});
process.exit(error ? 2 : result?.isError ? 1 : 0);
