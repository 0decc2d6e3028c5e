// Edge events: one small JSON message per request, published to Pulsar's REST
// produce API from ctx.waitUntil so the response is never delayed.
//
// The REST endpoint answers 200 even when a message failed, so every result's
// errorCode is checked. Broker de-duplication may be on for the namespace, so
// each isolate publishes under its own producer name with increasing
// sequence ids (otherwise every message after the first would be dropped as a
// duplicate).

const PUBLISH_TIMEOUT_MS = 10_000;

/**
 * Publishes edge events for one Worker isolate. publish() never throws: a
 * failure is logged with the event's request id.
 */
export class EdgePublisher {
  #cfg;
  #fetch;
  #log;
  #producerName;
  #seq;

  /**
   * @param {{produceURL: string, token: string|null, producerName: string}} cfg
   * @param {{fetch?: typeof fetch, log?: Console, now?: () => number}} [deps]
   */
  constructor(cfg, deps = {}) {
    this.#cfg = cfg;
    this.#fetch = deps.fetch ?? ((...a) => fetch(...a));
    this.#log = deps.log ?? console;
    this.#producerName = `${cfg.producerName}-${crypto.randomUUID()}`;
    // Start from the clock so a recycled name could never go backwards.
    this.#seq = (deps.now ?? Date.now)() * 1000;
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
    const body = {
      producerName: this.#producerName,
      messages: [
        {
          key: event.sub || 'anonymous',
          payload: JSON.stringify(event),
          eventTime: String(Date.parse(event.time)),
          sequenceId: ++this.#seq,
        },
      ],
    };
    const headers = { 'content-type': 'application/json', accept: 'application/json' };
    if (this.#cfg.token) headers.authorization = `Bearer ${this.#cfg.token}`;
    try {
      const resp = await this.#fetch(this.#cfg.produceURL, {
        method: 'POST',
        headers,
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(PUBLISH_TIMEOUT_MS),
      });
      const text = await resp.text();
      if (resp.status !== 200) throw new Error(`status ${resp.status}: ${text.slice(0, 200)}`);
      const acks = JSON.parse(text);
      const results = acks?.messagePublishResults;
      if (!Array.isArray(results) || results.length !== 1) throw new Error(`unexpected answer: ${text.slice(0, 200)}`);
      const r = results[0];
      if (r.errorCode !== undefined && r.errorCode !== null && r.errorCode !== 0) {
        throw new Error(`errorCode ${r.errorCode}: ${r.errorMsg ?? ''}`);
      }
      return true;
    } catch (err) {
      this.#log.error(
        JSON.stringify({
          msg: 'edge event not published',
          request_id: event.request_id,
          url: this.#cfg.produceURL,
          error: String(err?.message ?? err),
        }),
      );
      return false;
    }
  }
}
