// EdgePublisher's ordering and failure handling, against a fake fetch (the
// Worker's tests in workerd cover it end to end).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { EdgePublisher } from '../src/edge.js';

const CFG = { produceURL: 'http://pulsar.test/topics/persistent/public/default/portcullis-edge', token: 't', producerName: 'portcullis-worker' };

function event(i) {
  return { time: new Date(1_700_000_000_000 + i).toISOString(), request_id: `req-${i}`, sub: `u${i % 3}`, route: 'r', method: 'GET', path: '/', status: 200, verdict: 'allow' };
}

/** A fetch that answers after a random delay and records what arrived, in arrival order. */
function fakeBroker({ delay = () => Math.random() * 5, answer } = {}) {
  const arrived = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const fetch = async (url, init) => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    try {
      const body = JSON.parse(init.body);
      arrived.push(body);
      await new Promise((resolve) => setTimeout(resolve, delay()));
      const results = answer ? answer(body) : body.messages.map(() => ({ messageId: '1:1:0', errorCode: 0 }));
      return new Response(JSON.stringify({ messagePublishResults: results }), { status: 200 });
    } finally {
      inFlight--;
    }
  };
  return { fetch, arrived, maxInFlight: () => maxInFlight };
}

function quietLog() {
  const lines = [];
  return { lines, error: (l) => lines.push(JSON.parse(l)) };
}

describe('EdgePublisher', () => {
  it('sends concurrent events one POST at a time, sequence ids increasing in arrival order', async () => {
    const broker = fakeBroker();
    const log = quietLog();
    const pub = new EdgePublisher(CFG, { fetch: broker.fetch, log });
    const oks = await Promise.all(Array.from({ length: 60 }, (_, i) => pub.publish(event(i))));
    assert.ok(oks.every(Boolean), 'every publish reports success');
    assert.equal(broker.maxInFlight(), 1, 'more than one POST in flight');
    const msgs = broker.arrived.flatMap((b) => b.messages);
    assert.equal(msgs.length, 60);
    for (let i = 1; i < msgs.length; i++) assert.ok(msgs[i].sequenceId > msgs[i - 1].sequenceId, `ids out of order at ${i}`);
    assert.deepEqual(new Set(msgs.map((m) => JSON.parse(m.payload).request_id)).size, 60, 'an event was sent twice or not at all');
    assert.ok(broker.arrived.length < 60, `queued events were not batched: ${broker.arrived.length} POSTs`);
    assert.ok(broker.arrived.every((b) => b.producerName === pub.producerName));
    assert.deepEqual(log.lines, []);
  });

  it('reports and logs only the messages the broker failed', async () => {
    const broker = fakeBroker({
      answer: (body) => body.messages.map((m) => (JSON.parse(m.payload).request_id === 'req-1' ? { errorCode: 2, errorMsg: 'boom' } : { errorCode: 0 })),
    });
    const log = quietLog();
    const pub = new EdgePublisher(CFG, { fetch: broker.fetch, log });
    const oks = await Promise.all([0, 1, 2].map((i) => pub.publish(event(i))));
    assert.deepEqual(oks, [true, false, true]);
    assert.equal(log.lines.length, 1);
    assert.equal(log.lines[0].request_id, 'req-1');
    assert.match(log.lines[0].error, /errorCode 2: boom/);
  });

  it('fails every event of a POST the broker refused, and keeps publishing afterwards', async () => {
    let refuse = true;
    const log = quietLog();
    const pub = new EdgePublisher(CFG, {
      log,
      fetch: async () => (refuse ? new Response('no', { status: 503 }) : new Response(JSON.stringify({ messagePublishResults: [{ errorCode: 0 }] }), { status: 200 })),
    });
    assert.equal(await pub.publish(event(0)), false);
    assert.match(log.lines[0].error, /status 503/);
    refuse = false;
    assert.equal(await pub.publish(event(1)), true);
  });

  it('sends again, with the same ids, the events of a POST whose request was cut off', async () => {
    let now = 1_700_000_000_000;
    const arrived = [];
    const pub = new EdgePublisher(CFG, {
      log: quietLog(),
      now: () => now,
      sleep: async () => {
        now += 1000;
        await new Promise((resolve) => setImmediate(resolve));
      },
      fetch: async (url, init) => {
        const body = JSON.parse(init.body);
        arrived.push(body.messages.map((m) => m.sequenceId));
        if (arrived.length === 1) return new Promise(() => {}); // the runtime never resumes this request
        return new Response(JSON.stringify({ messagePublishResults: body.messages.map(() => ({ errorCode: 0 })) }), { status: 200 });
      },
    });
    void pub.publish(event(0));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(await pub.publish(event(1)), true);
    assert.equal(arrived.length, 2);
    assert.deepEqual(arrived[1], [arrived[0][0], arrived[0][0] + 1], 'the cut-off event is resent first, under its own id');
  });

  it('waits longer and longer behind a slow POST, and drops events beyond 1000 waiting', async () => {
    let release;
    const gate = new Promise((resolve) => {
      release = resolve;
    });
    const sleeps = [];
    const log = quietLog();
    const pub = new EdgePublisher(CFG, {
      log,
      sleep: async (ms) => {
        sleeps.push(ms);
        await new Promise((resolve) => setTimeout(resolve, 1));
      },
      fetch: async (url, init) => {
        await gate;
        const n = JSON.parse(init.body).messages.length;
        return new Response(JSON.stringify({ messagePublishResults: Array.from({ length: n }, () => ({ errorCode: 0 })) }), { status: 200 });
      },
    });
    const first = pub.publish(event(0)); // its POST hangs on the gate
    const waiting = Array.from({ length: 1000 }, (_, i) => pub.publish(event(i + 1)));
    assert.equal(await pub.publish(event(2000)), false, 'the 1001st waiting event was queued');
    assert.equal(log.lines[0]?.msg, 'edge event dropped: too many waiting for the broker');
    await new Promise((resolve) => setTimeout(resolve, 100));
    release();
    const oks = await Promise.all([first, ...waiting]);
    assert.ok(oks.every(Boolean), 'a queued event was lost');
    const distinct = [...new Set(sleeps)].sort((a, b) => a - b);
    assert.deepEqual(distinct.slice(0, 3), [2, 4, 8], `waits ${distinct}`);
    assert.ok(Math.max(...sleeps) <= 100, `a wait of ${Math.max(...sleeps)} ms`);
  });
});
