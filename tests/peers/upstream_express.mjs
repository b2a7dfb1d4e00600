// Express 5 upstream for the path-bypass tests.
//
// Default router settings (case-insensitive, non-strict); matching is done on
// the raw (not percent-decoded) path. Answers with the handler name and req.path:
//   /api/admin, /api/admin/...  -> 200 "ADMIN <path>"
//   /api, /api/...              -> 200 "API <path>"
//   /health                     -> 200 "HEALTH"
//   anything else               -> 404 (Express default)
//
// Run: node upstream_express.mjs --port N   (binds 127.0.0.1, prints "ready")
import express from 'express';

const i = process.argv.indexOf('--port');
const port = i > 0 ? Number(process.argv[i + 1]) : NaN;
if (!Number.isInteger(port)) {
  console.error('usage: node upstream_express.mjs --port N');
  process.exit(2);
}

const tagged = (tag) => (req, res) => res.type('text/plain').send(`${tag} ${req.path}`);

const app = express();
// app.all covers every method, including HEAD (sent without a body).
app.all(['/api/admin', '/api/admin/*rest'], tagged('ADMIN'));
app.all(['/api', '/api/*rest'], tagged('API'));
app.all('/health', (req, res) => res.type('text/plain').send('HEALTH'));

app.listen(port, '127.0.0.1', (err) => {
  if (err) throw err;
  console.log('ready');
});
