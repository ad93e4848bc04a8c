// The training server of examples/server/, in process: each endpoint, bad input, failed
// steps, weights that change only between whole steps, and a graceful close.

import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { evaluate, examples, examplesOfIds, initParams, loadNames, sampleNames, type Params } from '../../bench/demo/namesModel.js';
import { mulberry32 } from '../../lib/random.js';
import { scoreNames, startTrainingServer, type TrainingServer } from '../../examples/server/server.js';
import { Trainer } from '../../examples/server/trainer.js';
import { WeightStore } from '../../examples/server/weights.js';

const { held } = loadNames();
const quiet = () => {};

async function call(base: string, path: string, init?: RequestInit): Promise<{ status: number; body: any; headers: Headers }> {
  const res = await fetch(base + path, init);
  const text = await res.text();
  return { status: res.status, body: text === '' ? null : JSON.parse(text), headers: res.headers };
}
const post = (base: string, path: string, body: string, type = 'application/json') =>
  call(base, path, { method: 'POST', body, headers: { 'content-type': type } });
const copy = (p: Params): Params => structuredClone(p);
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('WeightStore', () => {
  it('keeps leased weights unchanged and out of reuse while steps land, and reuses them after', async () => {
    const trainer = new Trainer({ mode: 'async' });
    const store = trainer.store;
    await trainer.step();
    const lease = store.acquire();
    const before = copy(lease.params);
    for (let i = 0; i < 12; i++) {
      await trainer.step();
      expect(store.current.params).not.toBe(lease.params);
    }
    expect(store.current.version).toBe(lease.version + 12);
    expect(lease.params).toEqual(before); // bit for bit: no step wrote into it
    expect(store.current.params.W1).not.toEqual(before.W1);
    // Two sets alternate while nobody reads, plus the leased one.
    expect(store.allocated).toBe(3);
    store.release(lease);
    expect(() => store.release(lease)).toThrow(/no lease/);
    for (let i = 0; i < 4; i++) await trainer.step();
    expect(store.allocated).toBe(3); // the released set went back into use, nothing new
  }, 20_000);

  it('a failed step publishes nothing and returns its draft', () => {
    const store = new WeightStore(initParams());
    const d = store.draft();
    store.discard(d);
    expect(store.draft()).toBe(d);
    expect(store.current.version).toBe(0);
  });
});

describe('training server', () => {
  let s: TrainingServer;
  let base: string;
  const logged: string[] = [];
  beforeAll(async () => {
    s = await startTrainingServer({ mode: 'async', log: (line) => logged.push(line) });
    base = s.url;
    expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  }, 20_000);
  afterAll(async () => s.close());

  it('reports its state on GET /stats, and training moves it', async () => {
    const a = (await call(base, '/stats')).body;
    await new Promise((r) => setTimeout(r, 300));
    const b = (await call(base, '/stats')).body;
    expect(a.mode).toBe('async');
    expect(b.steps).toBeGreaterThan(a.steps);
    expect(b.version).toBe(b.steps); // one published version per successful step
    expect(b.tokens).toBe(64 * b.steps);
    expect(b.window.tokensPerSecond).toBeGreaterThan(0);
    expect(b.loss).toBeGreaterThan(0);
    expect(b.loss).toBeLessThan(Math.log(27) + 0.1); // from near-uniform predictions, down
    for (const k of ['p50', 'p99', 'max']) expect(b.eventLoopDelayMs[k]).toBeGreaterThanOrEqual(0);
    expect((await post(base, '/stats/reset', '')).status).toBe(200);
    expect((await call(base, '/stats')).body.window.steps).toBeLessThan(b.steps);
  });

  it('scores names on POST /score as the demo evaluates them', async () => {
    const r = await post(base, '/score', JSON.stringify({ names: ['Anna', 'zzqxj'] }));
    expect(r.status).toBe(200);
    expect(r.body.names.map((n: { name: string }) => n.name)).toEqual(['anna', 'zzqxj']);
    // Recompute at version 0 with the demo's evaluation (sync, 'sum' reduction) and compare.
    const p0 = initParams(42);
    const got = await scoreNames(p0, ['anna', 'zzqxj']);
    expect(got[0]!.loss).toBeCloseTo(evaluate(p0, examples(['anna'])), 5);
    expect(got[1]!.loss).toBeCloseTo(evaluate(p0, examples(['zzqxj'])), 5);
    // A trained model finds a real name likelier than a random string.
    expect(r.body.names[0].loss).toBeLessThan(r.body.names[1].loss);
    const text = await post(base, '/score', 'anna\nzzqxj', 'text/plain');
    expect(text.status).toBe(200);
    expect(text.body.names).toHaveLength(2);
  });

  it('samples names on GET /sample, reproducibly from the seed', async () => {
    const r = await call(base, '/sample?n=5&temperature=0.5&seed=11');
    expect(r.status).toBe(200);
    expect(r.body.seed).toBe(11);
    expect(r.body.names).toHaveLength(5);
    for (const n of r.body.names) expect(n).toMatch(/^[a-z]{0,20}$/);
    const d = await call(base, '/sample');
    expect(d.body.names).toHaveLength(1);
    expect(Number.isInteger(d.body.seed)).toBe(true);
  });

  it('accepts training text on POST /train and trains it', async () => {
    const r = await post(base, '/train', JSON.stringify({ names: ['Zyxwa', 'zyxwb'] }));
    expect(r.status).toBe(202);
    expect(r.body.examples).toBe(12);
    const t = await post(base, '/train', 'zyxwc\nzyxwd', 'text/plain');
    expect(t.status).toBe(202);
    for (let i = 0; i < 200 && (await call(base, '/stats')).body.submissions.trained < 2; i++) await new Promise((res) => setTimeout(res, 10));
    expect((await call(base, '/stats')).body.submissions.trained).toBeGreaterThanOrEqual(2);
  });

  it('answers bad requests with a 4xx and a message, and keeps serving', async () => {
    const cases: [string, Promise<{ status: number; body: any }>, number, RegExp][] = [
      ['bad JSON', post(base, '/score', '{"names": [}'), 400, /not valid JSON/],
      ['empty body', post(base, '/score', ''), 400, /empty/],
      ['not an object', post(base, '/score', '[1, 2]'), 400, /JSON object/],
      ['no names', post(base, '/score', '{"names": []}'), 400, /no names/],
      ['bad characters', post(base, '/score', '{"names": ["ok", "an1na", 7]}'), 400, /\[1\] "an1na", \[2\] 7/],
      ['too long a name', post(base, '/train', JSON.stringify({ names: ['a'.repeat(33)] })), 400, /1 to 32 letters/],
      ['too many names', post(base, '/score', JSON.stringify({ names: Array(257).fill('ann') })), 400, /at most 256/],
      ['tokens not integers', post(base, '/train', '{"tokens": [[1, 2.5]]}'), 400, /integers/],
      ['tokens not arrays', post(base, '/train', '{"tokens": 5}'), 400, /"tokens" must be/],
      ['n out of range', call(base, '/sample?n=0'), 400, /n must be an integer from 1 to 20/],
      ['bad temperature', call(base, '/sample?temperature=-1'), 400, /temperature/],
      ['bad seed', call(base, '/sample?seed=1.5'), 400, /seed/],
      ['unknown endpoint', call(base, '/nope'), 404, /no such endpoint/],
      ['wrong method', call(base, '/score'), 405, /GET is not allowed on \/score; use POST/],
      ['over-long body', post(base, '/score', JSON.stringify({ names: ['a'.repeat(70_000)] })), 413, /over the limit/],
    ];
    for (const [what, pending, status, message] of cases) {
      const r = await pending;
      expect(r.status, what).toBe(status);
      expect(r.body.error, what).toMatch(message);
    }
    expect((await call(base, '/score', { method: 'GET' })).headers.get('allow')).toBe('POST');
    // Not HTTP at all: the parser's error is answered 400 and the socket closed.
    const raw = await new Promise<string>((resolve, reject) => {
      const sock = net.connect(s.port, '127.0.0.1', () => sock.end('NOT HTTP\r\n\r\n'));
      let got = '';
      sock.on('data', (d) => (got += d));
      sock.on('end', () => resolve(got));
      sock.on('error', reject);
    });
    expect(raw).toMatch(/^HTTP\/1\.1 400/);
    // A client that goes away in the middle of its body.
    await new Promise<void>((resolve) => {
      const sock = net.connect(s.port, '127.0.0.1', () => {
        sock.write('POST /score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"names": [');
        setTimeout(() => { sock.destroy(); setTimeout(resolve, 50); }, 50);
      });
    });
    expect((await call(base, '/stats')).status).toBe(200);
    expect(logged.filter((l) => l.startsWith('request'))).toEqual([]); // no internal errors
  });

  it('reports a failing training step, skips it, and goes on training', async () => {
    const before = (await call(base, '/stats')).body;
    // 9 sequences of 6 ids fill rows 0..62; [40] puts label 40 (outside the 27 classes) on row
    // 63, the last of the submission's first batch, so the loss itself rejects it (E_LABEL).
    const tokens = [...Array(9).fill([1, 2, 3, 4, 5, 6]), [40]];
    expect(examplesOfIds(tokens).Y[63]).toBe(40);
    const r = await post(base, '/train', JSON.stringify({ tokens }));
    expect(r.status).toBe(202);
    let st = before;
    for (let i = 0; i < 300 && st.failedSteps === before.failedSteps; i++) {
      await new Promise((res) => setTimeout(res, 10));
      st = (await call(base, '/stats')).body;
    }
    expect(st.failedSteps).toBe(before.failedSteps + 1);
    expect(st.lastFailure.submission).toBe(r.body.id);
    expect(st.lastFailure.error).toMatch(/E_LABEL/);
    expect(st.submissions.failed).toBe(before.submissions.failed + 1);
    expect(st.queue.examples).toBe(0); // the rest of that submission was dropped
    await new Promise((res) => setTimeout(res, 100));
    const after = (await call(base, '/stats')).body;
    expect(after.steps).toBeGreaterThan(st.steps);
    expect(after.version).toBe(after.steps); // the failed step published nothing
    // A bad id that reaches a context is caught before it reads past the embedding table.
    await post(base, '/train', JSON.stringify({ tokens: [[1, 99, 2]] }));
    for (let i = 0; i < 300 && (await call(base, '/stats')).body.failedSteps === after.failedSteps; i++) {
      await new Promise((res) => setTimeout(res, 10));
    }
    expect((await call(base, '/stats')).body.lastFailure.error).toMatch(/context character id 99 is outside \[0, 27\)/);
  }, 20_000);
});

describe('atomic weight swaps', () => {
  it('every answer equals a recomputation from the weights of the version it names', async () => {
    const s = await startTrainingServer({ mode: 'async', log: quiet });
    const store = s.trainer.store;
    // Count the steps that land while some request holds weights: without any, this test
    // would prove nothing.
    let publishedUnderLease = 0;
    const publish = store.publish.bind(store);
    store.publish = (p) => {
      if (store.leases > 0) publishedUnderLease++;
      return publish(p);
    };
    while (s.trainer.steps < 10) await new Promise((r) => setTimeout(r, 10)); // past the first, slow steps
    // Two clients score back to back and one samples, for a second: some request holds weights
    // nearly all the time, so steps land under leases.
    const until = performance.now() + 1000;
    const client = async (k: number) => {
      const out: { kind: string; req: any; body: any }[] = [];
      for (let i = 0; performance.now() < until; i++) {
        if (k < 2) {
          // 40 names: about 5 loss calls, each after an await, while steps go on.
          const names = held.slice(((i * 2 + k) * 40) % 800, ((i * 2 + k) * 40) % 800 + 40);
          out.push({ kind: 'score', req: names, body: (await post(s.url, '/score', JSON.stringify({ names }))).body });
        } else {
          const q = { n: 3, seed: i, temperature: 0.9 };
          out.push({ kind: 'sample', req: q, body: (await call(s.url, `/sample?n=${q.n}&seed=${q.seed}&temperature=${q.temperature}`)).body });
          await new Promise((r) => setTimeout(r, 20));
        }
      }
      return out;
    };
    const answers = [client(0), client(1), client(2)];
    const got = (await Promise.all(answers)).flat();
    await s.close();
    expect(publishedUnderLease).toBeGreaterThan(0);
    const versions = new Set(got.map((g) => g.body.version));
    expect(versions.size).toBeGreaterThanOrEqual(3);

    // Replay the same training (deterministic: same data order, same arithmetic) version by version.
    const replay = new Trainer({ mode: 'sync' });
    got.sort((a, b) => a.body.version - b.body.version);
    for (const g of got) {
      while (replay.store.current.version < g.body.version) expect(await replay.step()).toBe(true);
      const p = replay.store.current.params;
      if (g.kind === 'score') {
        expect(g.body.names, `score at version ${g.body.version}`).toEqual(await scoreNames(p, g.req));
      } else {
        expect(g.body.names, `sample at version ${g.body.version}`).toEqual(sampleNames(p, g.req.n, mulberry32(g.req.seed), g.req.temperature));
      }
    }
  }, 30_000);
});

describe('graceful close', () => {
  it('finishes the step under way and the requests in flight, then stops', async () => {
    const s = await startTrainingServer({ mode: 'async', log: quiet });
    const t = s.trainer;
    // A long request, in flight once it holds weights.
    const pending = post(s.url, '/score', JSON.stringify({ names: held.slice(0, 200) }));
    while (s.trainer.store.leases === 0) await nextTurn();
    while (!t.inStep) await nextTurn();
    const stepsAtClose = t.steps;
    await s.close();
    expect(t.inStep).toBe(false);
    expect(t.steps).toBe(stepsAtClose + 1); // the step under way was finished and published
    expect(t.store.current.version).toBe(t.steps);
    const r = await pending;
    expect(r.status).toBe(200);
    expect(r.body.names).toHaveLength(200);
    await new Promise((res) => setTimeout(res, 50));
    expect(t.steps).toBe(stepsAtClose + 1); // and no step after it
    await expect(fetch(`${s.url}/stats`)).rejects.toThrow();
  }, 20_000);
});
