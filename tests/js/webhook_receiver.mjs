// A webhook receiver for the tests: every request is checked with the official Pusher server
// SDK's webhook validator, answered 200 when valid (401 when not), and printed as one JSON line:
// {"id", "valid", "key", "time_ms", "events"}. The first line is {"listening": PORT}.
//
//   node webhook_receiver.mjs PORT KEY SECRET
import http from 'node:http';
import Pusher from 'pusher';

const [port, key, secret] = process.argv.slice(2);
const pusher = new Pusher({ appId: '1', key, secret, cluster: 'mt1' });

const server = http.createServer((req, res) => {
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', () => {
    const webhook = pusher.webhook({ headers: req.headers, rawBody: body });
    const valid = webhook.isValid();
    console.log(JSON.stringify({
      id: req.headers['x-pushlite-webhook-id'] ?? null,
      valid,
      key: req.headers['x-pusher-key'] ?? null,
      time_ms: valid ? webhook.getTime().getTime() : null,
      events: valid ? webhook.getEvents() : null,
    }));
    res.writeHead(valid ? 200 : 401);
    res.end();
  });
});
server.listen(Number(port), '127.0.0.1', () => {
  console.log(JSON.stringify({ listening: server.address().port }));
});
