// A fixed-rate (open-loop) HTTP load generator: request i is sent at t0 + i/rate whatever
// happened to the earlier ones (it never waits for answers), so a server that stalls is
// charged for every request it holds up (no coordinated omission). Latency runs from the
// moment a request is handed to node:http; how late the generator itself was against the
// schedule is reported beside it. It sends rate × seconds requests and stops by itself.

import http from 'node:http';
import { createHistogram, type RecordableHistogram } from 'node:perf_hooks';

export interface LoadRequest {
  /** Label for the per-endpoint figures. */
  name: string;
  method: 'GET' | 'POST';
  path: string;
  body?: string;
}

export interface LoadOptions {
  url: string;
  /** Requests per second, over all of `requests`. */
  rate: number;
  seconds: number;
  /** Request i is `next(i)`: alternate endpoints, vary bodies. */
  next: (i: number) => LoadRequest;
  /** A request not answered within this many ms counts as an error. Default 10 000. */
  timeoutMs?: number;
}

export interface Latency { count: number; p50: number; p99: number; max: number }
export interface LoadResult {
  sent: number;
  ok: number;
  /** Answers other than 2xx, by status. */
  statuses: Record<string, number>;
  errors: number;
  seconds: number;
  requestsPerSecond: number;
  /** Milliseconds, from sending each request to its full answer; 2xx answers only. */
  latencyMs: Record<string, Latency> & { all: Latency };
  /** How late the generator itself sent requests (its own event loop), p99 and max in ms. */
  sendLagMs: { p99: number; max: number };
}

const summary = (h: RecordableHistogram): Latency => ({
  count: h.count,
  p50: h.count > 0 ? h.percentile(50) / 1000 : NaN,
  p99: h.count > 0 ? h.percentile(99) / 1000 : NaN,
  max: h.count > 0 ? h.max / 1000 : NaN,
});

export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  const { rate, seconds, next } = options;
  const timeoutMs = options.timeoutMs ?? 10_000;
  const base = new URL(options.url);
  if (base.hostname !== '127.0.0.1' && base.hostname !== 'localhost' && base.hostname !== '[::1]') {
    throw new Error(`the load generator only drives loopback servers, not ${base.hostname}`);
  }
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const total = Math.round(rate * seconds);
  const all = createHistogram(), lag = createHistogram();
  const byName = new Map<string, RecordableHistogram>();
  const statuses: Record<string, number> = {};
  let ok = 0, errors = 0;

  const send = (r: LoadRequest) =>
    new Promise<void>((resolve) => {
      const start = performance.now();
      const req = http.request(
        { host: base.hostname, port: base.port, path: r.path, method: r.method, agent, timeout: timeoutMs,
          headers: r.body !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(r.body) } : {} },
        (res) => {
          res.resume();
          res.on('end', () => {
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) {
              ok++;
              const us = Math.max(1, Math.round((performance.now() - start) * 1000));
              all.record(us);
              let h = byName.get(r.name);
              if (h === undefined) byName.set(r.name, (h = createHistogram()));
              h.record(us);
            } else {
              statuses[status] = (statuses[status] ?? 0) + 1;
            }
            resolve();
          });
          res.on('error', () => { errors++; resolve(); });
        },
      );
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', () => { errors++; resolve(); });
      req.end(r.body);
    });

  const t0 = performance.now();
  const inFlight: Promise<void>[] = [];
  for (let i = 0; i < total; i++) {
    const due = t0 + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    lag.record(Math.max(1, Math.round((performance.now() - due) * 1000)));
    inFlight.push(send(next(i)));
  }
  await Promise.all(inFlight);
  const elapsed = (performance.now() - t0) / 1000;
  agent.destroy();

  const latencyMs = { all: summary(all) } as LoadResult['latencyMs'];
  for (const [name, h] of byName) latencyMs[name] = summary(h);
  return {
    sent: total, ok, statuses, errors, seconds: elapsed, requestsPerSecond: ok / elapsed, latencyMs,
    sendLagMs: { p99: lag.percentile(99) / 1000, max: lag.max / 1000 },
  };
}
