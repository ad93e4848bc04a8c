// An HTTP service that trains the names model while it answers from the current weights.
//
//   POST /train        {"names": ["anna", …]} | {"text": "anna\nbob"} | {"tokens": [[1, 14, …], …]}
//                      or text/plain, one name per line → 202 {id, examples, queued}
//   GET  /sample       ?n=1..20 &temperature=0.8 &seed=<integer> → {version, seed, names}
//   POST /score        {"names": […]} | {"text": "…"} | text/plain → {version, mean, names: [{name, loss, chars}]}
//   GET  /stats        steps, tokens/s, loss, event-loop delay, queue, last failure
//   POST /stats/reset  start a new measuring window (tokens/s, event-loop delay)
//
// Bad requests get a 4xx and {"error": "…"}; a failing training step is reported in /stats
// and skipped. close() finishes the step under way, answers what is in flight, and stops.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { getBackend, linearCrossEntropyAsync, tensor } from '../../lib/index.js';
import { mulberry32 } from '../../lib/random.js';
import { H, K, V, examples, hidden, sampleNames, type Params } from '../../bench/demo/namesModel.js';
import { Trainer, type Failure, type TrainerOptions } from './trainer.js';

export interface ServerOptions extends TrainerOptions {
  /** Loopback only by default. */
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** Largest request body in bytes. Default 64 KiB. */
  maxBodyBytes?: number;
  /** Where the server's own log lines go (failed steps, shutdown). Default: stderr. */
  log?: (line: string) => void;
}

export interface TrainingServer {
  readonly url: string;
  readonly port: number;
  readonly trainer: Trainer;
  readonly http: http.Server;
  /** Stop accepting, finish the training step under way and the requests in flight, close. */
  close(): Promise<void>;
}

const MAX_NAMES = 256; // per /score or /train request
const MAX_NAME_LENGTH = 32;
const MAX_QUEUED_EXAMPLES = 100_000; // posted data waiting to train
const SCORE_CHUNK = 64; // positions per loss call: bounds each slice of JS work in a request

class HttpError extends Error {
  constructor(readonly status: number, message: string) { super(message); }
}

// ---------------------------------------------------------------- model queries

/**
 * Mean loss per character (the end mark included) of each name under `params`, in chunks of
 * SCORE_CHUNK positions, each chunk's loss on the libuv pool. The caller holds a lease on
 * `params`: chunks after the first run after awaits, while training goes on.
 */
export async function scoreNames(params: Params, names: string[]): Promise<{ name: string; loss: number; chars: number }[]> {
  const split = examples(names);
  const losses = new Float32Array(split.n);
  for (let lo = 0; lo < split.n; lo += SCORE_CHUNK) {
    const hi = Math.min(split.n, lo + SCORE_CHUNK);
    const { h, B } = hidden(params, split.X.subarray(lo * K, hi * K));
    const out = await linearCrossEntropyAsync(tensor(h, [B, H]), tensor(params.W2, [V, H]), split.Y.subarray(lo, hi), {
      bias: params.b2, reduction: 'none', computeGrad: false,
    });
    losses.set(out.loss as Float32Array, lo);
  }
  let at = 0;
  return names.map((name) => {
    const chars = name.length + 1;
    let sum = 0;
    for (let i = at; i < at + chars; i++) sum += losses[i]!;
    at += chars;
    return { name, loss: sum / chars, chars };
  });
}

// ---------------------------------------------------------------- request parsing

async function readBody(req: http.IncomingMessage, limit: number): Promise<string> {
  const declared = Number(req.headers['content-length']);
  if (declared > limit) throw new HttpError(413, `request body of ${declared} bytes is over the limit of ${limit}`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new HttpError(413, `request body is over the limit of ${limit} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** The body as lines of text when it is text/plain, else as JSON (whatever a client calls it). */
async function readPayload(req: http.IncomingMessage, limit: number): Promise<unknown> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  const body = await readBody(req, limit);
  if (type === 'text/plain') return { text: body };
  if (body.trim() === '') throw new HttpError(400, 'request body is empty; expected a JSON object (or text/plain lines)');
  try {
    return JSON.parse(body);
  } catch (e) {
    throw new HttpError(400, `request body is not valid JSON: ${(e as Error).message}`);
  }
}

/** Names from {names: [...]} or {text: "..."}: lowercased, a–z only, 1..MAX_NAMES of them. */
function parseNames(payload: unknown): string[] {
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
    throw new HttpError(400, 'expected a JSON object with "names" (an array of strings) or "text" (a string)');
  }
  const p = payload as Record<string, unknown>;
  let raw: unknown[];
  if (Array.isArray(p.names)) raw = p.names;
  else if (typeof p.text === 'string') raw = p.text.split(/[\s,]+/).filter((s) => s !== '');
  else throw new HttpError(400, 'expected "names" (an array of strings) or "text" (a string)');
  if (raw.length === 0) throw new HttpError(400, 'no names given');
  if (raw.length > MAX_NAMES) throw new HttpError(400, `at most ${MAX_NAMES} names per request, got ${raw.length}`);
  const bad: string[] = [];
  const names = raw.map((s, i) => {
    const name = typeof s === 'string' ? s.trim().toLowerCase() : '';
    if (!/^[a-z]+$/.test(name) || name.length > MAX_NAME_LENGTH) bad.push(`[${i}] ${JSON.stringify(s)}`);
    return name;
  });
  if (bad.length > 0) {
    throw new HttpError(
      400,
      `names must be 1 to ${MAX_NAME_LENGTH} letters a–z; not: ${bad.slice(0, 5).join(', ')}` +
        (bad.length > 5 ? ` and ${bad.length - 5} more` : ''),
    );
  }
  return names;
}

/** Pre-tokenized sequences: arrays of integer ids. Their range is the trainer's to check. */
function parseTokens(tokens: unknown): number[][] {
  if (!Array.isArray(tokens) || tokens.length === 0 || tokens.length > MAX_NAMES) {
    throw new HttpError(400, `"tokens" must be an array of 1 to ${MAX_NAMES} arrays of integer character ids`);
  }
  tokens.forEach((seq, i) => {
    if (!Array.isArray(seq) || seq.length === 0 || seq.length > MAX_NAME_LENGTH || !seq.every(Number.isSafeInteger)) {
      throw new HttpError(400, `"tokens"[${i}] must be an array of 1 to ${MAX_NAME_LENGTH} integers`);
    }
  });
  return tokens as number[][];
}

function queryNumber(url: URL, key: string, fallback: number, ok: (x: number) => boolean, what: string): number {
  const s = url.searchParams.get(key);
  if (s === null) return fallback;
  const x = s.trim() === '' ? NaN : Number(s);
  if (!ok(x)) throw new HttpError(400, `query parameter ${key} must be ${what}, got ${JSON.stringify(s)}`);
  return x;
}

// ---------------------------------------------------------------- the server

export async function startTrainingServer(options: ServerOptions = {}): Promise<TrainingServer> {
  const host = options.host ?? '127.0.0.1';
  const maxBody = options.maxBodyBytes ?? 64 * 1024;
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const trainer = new Trainer(options);
  const store = trainer.store;
  const seeds = mulberry32(Date.now() >>> 0);
  // The histogram holds intervals between timer ticks: the delay is what exceeds the resolution.
  const RESOLUTION_MS = 1;
  const loopDelay = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  loopDelay.enable();
  const started = performance.now();
  let closing = false;

  const stats = () => {
    const w = trainer.window();
    const ms = (ns: number) => Math.max(0, Math.round((ns / 1e6 - RESOLUTION_MS) * 100) / 100);
    return {
      mode: trainer.mode,
      backend: getBackend(),
      version: store.current.version,
      steps: trainer.steps,
      failedSteps: trainer.failedSteps,
      tokens: trainer.tokens,
      loss: trainer.lossEma, // moving average over ~50 steps
      window: {
        seconds: w.seconds, steps: w.steps, tokens: w.tokens, tokensPerSecond: w.tokensPerSecond, stepMs: w.stepMs,
      },
      eventLoopDelayMs: {
        p50: ms(loopDelay.percentile(50)), p99: ms(loopDelay.percentile(99)), max: ms(loopDelay.max),
        mean: ms(loopDelay.mean), samples: loopDelay.count,
      },
      queue: { submissions: trainer.queuedSubmissions, examples: trainer.queuedExamples },
      submissions: trainer.submissions,
      lastFailure: trainer.lastFailure,
      leases: store.leases,
      uptimeSeconds: (performance.now() - started) / 1000,
    };
  };

  const routes: Record<string, Partial<Record<string, (req: http.IncomingMessage, url: URL) => Promise<[number, unknown]>>>> = {
    '/stats': { GET: async () => [200, stats()] },
    '/stats/reset': {
      POST: async () => {
        trainer.resetWindow();
        loopDelay.reset();
        return [200, { reset: true }];
      },
    },
    '/sample': {
      GET: async (_req, url) => {
        const n = queryNumber(url, 'n', 1, (x) => Number.isInteger(x) && x >= 1 && x <= 20, 'an integer from 1 to 20');
        const temperature = queryNumber(url, 'temperature', 0.8, (x) => x > 0 && x <= 10, 'a number in (0, 10]');
        const seed = queryNumber(url, 'seed', Math.floor(seeds() * 2 ** 32), (x) => Number.isInteger(x) && x >= 0 && x < 2 ** 32, 'an integer in [0, 2^32)');
        // Sampling is sync (microseconds a character): one version by construction.
        const s = store.current;
        return [200, { version: s.version, seed, names: sampleNames(s.params, n, mulberry32(seed), temperature) }];
      },
    },
    '/score': {
      POST: async (req) => {
        const names = parseNames(await readPayload(req, maxBody));
        return store.with(async (s) => {
          const scored = await scoreNames(s.params, names);
          const total = scored.reduce((a, r) => a + r.loss * r.chars, 0), chars = scored.reduce((a, r) => a + r.chars, 0);
          return [200, { version: s.version, mean: total / chars, names: scored }];
        });
      },
    },
    '/train': {
      POST: async (req) => {
        const payload = await readPayload(req, maxBody);
        const tokens = (payload as { tokens?: unknown } | null)?.tokens;
        const data = tokens !== undefined ? { ids: parseTokens(tokens) } : { names: parseNames(payload) };
        if (trainer.mode === 'off') throw new HttpError(409, 'this server does not train (mode off)');
        if (trainer.queuedExamples > MAX_QUEUED_EXAMPLES) {
          throw new HttpError(429, `the training queue is full (${trainer.queuedExamples} examples waiting); retry later`);
        }
        const { id, examples: n } = trainer.submit(data);
        return [202, { id, examples: n, queued: trainer.queuedSubmissions }];
      },
    },
  };

  const send = (res: http.ServerResponse, status: number, body: unknown) => {
    const text = JSON.stringify(body);
    res.writeHead(status, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(text),
      ...(closing ? { connection: 'close' } : {}),
    });
    res.end(text);
  };

  const server = http.createServer(async (req, res) => {
    try {
      if (closing) throw new HttpError(503, 'the server is shutting down');
      const url = new URL(req.url ?? '/', 'http://localhost');
      const route = routes[url.pathname];
      if (route === undefined) throw new HttpError(404, `no such endpoint: ${url.pathname}`);
      const handler = route[req.method ?? ''];
      if (handler === undefined) {
        res.setHeader('allow', Object.keys(route).join(', '));
        throw new HttpError(405, `${req.method} is not allowed on ${url.pathname}; use ${Object.keys(route).join(' or ')}`);
      }
      const [status, body] = await handler(req, url);
      send(res, status, body);
    } catch (e) {
      if (e instanceof HttpError) {
        // The rest of an over-long body is not read: close the connection after the answer.
        if (e.status === 413) res.setHeader('connection', 'close');
        send(res, e.status, { error: e.message });
      } else if (req.destroyed && !req.complete) {
        // The client went away mid-request: nobody to answer.
      } else {
        log(`request ${req.method} ${req.url} failed: ${(e as Error)?.stack ?? e}`);
        if (!res.headersSent) send(res, 500, { error: `internal error: ${(e as Error)?.message ?? e}` });
        else res.destroy();
      }
    }
  });
  // A malformed request never reaches the handler: answer 400 and drop the socket.
  server.on('clientError', (err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    else socket.destroy(err);
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  trainer.start((f: Failure) => log(`training step ${f.step} failed and was skipped: ${f.error}`));

  let closed: Promise<void> | null = null;
  const close = () => {
    closed ??= (async () => {
      closing = true;
      const serverClosed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      await trainer.stop();
      // In-flight requests get a few seconds to finish; then their connections are cut.
      const timer = setTimeout(() => server.closeAllConnections(), 5000);
      await serverClosed;
      clearTimeout(timer);
      loopDelay.disable();
    })();
    return closed;
  };

  return { url: `http://${host}:${port}`, port, trainer, http: server, close };
}
