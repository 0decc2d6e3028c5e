// Edge events: one small JSON message per request, published to Pulsar's REST
// produce API from ctx.waitUntil so the response is never delayed.
//
// The REST endpoint answers 200 even when a message failed, so every result's
// errorCode is checked. Broker de-duplication may be on for the namespace, so
// each isolate publishes under its own producer name with increasing
// sequence ids, and the ids must reach the broker in that order: a message
// whose id is not above the highest one the broker has seen from the producer
// is dropped as a duplicate. An isolate serves many requests at once, so its
// publishes go out one POST at a time, each carrying every event queued so far
// in id order (a burst of requests costs one subrequest, not one each).
//
// Every request waits in its own context, polling, until its event has been
// sent: a request never awaits a promise or I/O object another request
// created (the Workers runtime cancels or warns about such cross-request
// continuations), and no request keeps running to send later requests' events.

const PUBLISH_TIMEOUT_MS = 10_000;
// The most messages one POST carries.
const MAX_BATCH = 100;
// How often a request whose event is queued behind another POST looks
// again: first after POLL_MIN_MS, then twice as long each time up to
// POLL_MAX_MS, so that requests waiting out a slow broker cost little CPU.
const POLL_MIN_MS = 2;
const POLL_MAX_MS = 100;
// The most events an isolate holds while the broker is slow or down; more
// are dropped (and logged), as edge events are best-effort: an isolate's
// memory and CPU are worth more than a complete edge trail (Portcullis's
// own audit trail is the complete one).
const MAX_QUEUED = 1000;
// A POST still unfinished after this long belongs to a request the runtime
// cut off (its fetch would have timed out long before): its events go back
// to the front of the queue and another request sends them again, with the
// same sequence ids, which a de-duplicating broker keeps once.
const ABANDONED_MS = 3 * PUBLISH_TIMEOUT_MS;

export class EdgePublisher {
  #cfg;
  #fetch;
  #log;
  #producerName;
  #seq;
  #sleep;
  #queue = [];
  #now;
  /** @type {{batch: object[], since: number}|null} the POST under way */
  #inflight = null;
  #dropped = 0;

  /**
   * @param {{produceURL: string, token: string|null, producerName: string}} cfg
   * @param {{fetch?: typeof fetch, log?: Console, now?: () => number,
   *          sleep?: (ms: number) => Promise<void>}} [deps]
   */
  constructor(cfg, deps = {}) {
    this.#cfg = cfg;
    this.#fetch = deps.fetch ?? ((...a) => fetch(...a));
    this.#log = deps.log ?? console;
    this.#sleep = deps.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
    this.#producerName = `${cfg.producerName}-${crypto.randomUUID()}`;
    // Start from the clock so a recycled name could never go backwards.
    this.#now = deps.now ?? Date.now;
    this.#seq = this.#now() * 1000;
  }

  /** The producer name this isolate publishes under. */
  get producerName() {
    return this.#producerName;
  }

  /**
   * @param {{time: string, request_id: string, sub: string, route: string,
   *          method: string, path: string, status: number, verdict: string,
   *          reason?: string}} event
   */
  async publish(event) {
    const entry = {
      event,
      message: {
        key: event.sub || 'anonymous',
        payload: JSON.stringify(event),
        eventTime: String(Date.parse(event.time)),
        sequenceId: ++this.#seq,
      },
      done: false,
      ok: false,
    };
    if (this.#queue.length >= MAX_QUEUED) {
      this.#dropped++;
      if (this.#dropped === 1 || this.#dropped % 100 === 0) {
        this.#log.error(
          JSON.stringify({
            msg: 'edge event dropped: too many waiting for the broker',
            request_id: event.request_id,
            queued: this.#queue.length,
            dropped_total: this.#dropped,
          }),
        );
      }
      return false;
    }
    this.#queue.push(entry);
    let wait = POLL_MIN_MS;
    while (!entry.done) {
      if (this.#inflight && this.#now() - this.#inflight.since > ABANDONED_MS) {
        this.#queue.unshift(...this.#inflight.batch.filter((e) => !e.done));
        this.#inflight = null;
      }
      if (this.#inflight) {
        await this.#sleep(wait);
        wait = Math.min(wait * 2, POLL_MAX_MS);
        continue;
      }
      const mine = { batch: this.#queue.splice(0, MAX_BATCH), since: this.#now() };
      this.#inflight = mine;
      try {
        await this.#send(mine.batch);
      } finally {
        if (this.#inflight === mine) this.#inflight = null;
      }
    }
    return entry.ok;
  }

  /** Sends one batch and marks each entry done; failures are logged per event. */
  async #send(batch) {
    const body = { producerName: this.#producerName, messages: batch.map((e) => e.message) };
    const headers = { 'content-type': 'application/json', accept: 'application/json' };
    if (this.#cfg.token) headers.authorization = `Bearer ${this.#cfg.token}`;
    let failures;
    try {
      const resp = await this.#fetch(this.#cfg.produceURL, {
        method: 'POST',
        headers,
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(PUBLISH_TIMEOUT_MS),
      });
      const text = await resp.text();
      if (resp.status !== 200) throw new Error(`status ${resp.status}: ${text.slice(0, 200)}`);
      const results = JSON.parse(text)?.messagePublishResults;
      if (!Array.isArray(results) || results.length !== batch.length) {
        throw new Error(`unexpected answer for ${batch.length} messages: ${text.slice(0, 200)}`);
      }
      failures = results.map((r) =>
        r?.errorCode !== undefined && r?.errorCode !== null && r?.errorCode !== 0 ? `errorCode ${r.errorCode}: ${r.errorMsg ?? ''}` : null,
      );
    } catch (err) {
      failures = batch.map(() => String(err?.message ?? err));
    }
    batch.forEach((entry, i) => {
      entry.done = true;
      entry.ok = failures[i] === null;
      if (!entry.ok) {
        this.#log.error(
          JSON.stringify({
            msg: 'edge event not published',
            request_id: entry.event.request_id,
            url: this.#cfg.produceURL,
            error: failures[i],
          }),
        );
      }
    });
  }
}
