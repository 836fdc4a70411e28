'use strict';

// The load generator of the HTTP run, in a child process so that it does not share the event
// loop of the server it measures. It receives { url, cookies, connections, durationSec } over
// IPC, runs autocannon with each request carrying the next cookie in turn, and sends back the
// figures the benchmark reports.
const autocannon = require('autocannon');

process.once('message', async ({ url, cookies, connections, durationSec }) => {
  let next = 0;
  const result = await autocannon({
    url,
    connections,
    duration: durationSec,
    requests: [
      {
        method: 'GET',
        path: '/',
        setupRequest: (request) => {
          const cookie = cookies[next % cookies.length];
          next += 1;
          return { ...request, headers: { ...request.headers, cookie } };
        },
      },
    ],
  });
  const reply = {
    durationSec: result.duration,
    completed: result.requests.total,
    ok: result['2xx'],
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    requestsPerSec: result.requests.average,
    latencyP50Ms: result.latency.p50,
    latencyP99Ms: result.latency.p99,
    latencyMeanMs: result.latency.average,
    latencyMaxMs: result.latency.max,
  };
  process.send(reply, () => process.disconnect());
});
