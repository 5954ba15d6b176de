import type { PublishErrorCode } from "@realtime-gateway/protocol";

/** Codes the publisher itself adds to the gateway's: the gateway could not be reached. */
export type PublisherErrorCode = PublishErrorCode | "network_error";

/**
 * A refused or failed publish: the gateway's `code`, the `field` at fault (`payload.scriptId`,
 * `rooms[1]`, `[2].payload.userId` in a batch) and the HTTP `status` (0 when no HTTP answer
 * was involved: Redis mode, or a network failure).
 */
export class PublishError extends Error {
  override readonly name = "PublishError";
  readonly code: PublisherErrorCode;
  readonly field: string | undefined;
  readonly status: number;
  /** Attempts made, retries included. */
  readonly attempts: number;
  /** What the gateway asked to wait before retrying (`Retry-After`), in milliseconds. */
  readonly retryAfterMs: number | undefined;

  constructor(
    code: PublisherErrorCode,
    message: string,
    options: { field?: string | undefined; status?: number; attempts?: number; retryAfterMs?: number | undefined; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.field = options.field;
    this.status = options.status ?? 0;
    this.attempts = options.attempts ?? 1;
    this.retryAfterMs = options.retryAfterMs;
  }

  /** The same error after `attempts` attempts. */
  withAttempts(attempts: number): PublishError {
    return new PublishError(this.code, this.message, {
      field: this.field,
      status: this.status,
      attempts,
      retryAfterMs: this.retryAfterMs,
      cause: this.cause,
    });
  }
}

/** Errors after which nothing was published and the same request may simply be sent again. */
export const RETRIED_CODES: ReadonlySet<PublisherErrorCode> = new Set(["bus_unavailable", "rate_limited"]);

/** How a publisher retries `bus_unavailable` and `rate_limited` (nothing else is retried). */
export interface RetryOptions {
  /** Retries after the first attempt (default 3; 0 turns retrying off). */
  retries?: number;
  /** First backoff, doubled on each retry (default 200 ms). */
  baseDelayMs?: number;
  /** Longest wait between attempts, `Retry-After` included (default 10 s). */
  maxDelayMs?: number;
  /** Called before each retry, e.g. to log it. */
  onRetry?: (error: PublishError, attempt: number, delayMs: number) => void;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Runs `attempt` until it succeeds, fails with an error that is not retried, or runs out of
 * retries. The wait is the exponential backoff or the gateway's `Retry-After`, whichever is
 * longer, capped at `maxDelayMs`.
 */
export async function withRetries<T>(retry: RetryOptions | undefined, attempt: () => Promise<T>): Promise<T> {
  const retries = Math.max(0, retry?.retries ?? 3);
  const base = retry?.baseDelayMs ?? 200;
  const max = retry?.maxDelayMs ?? 10_000;
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (e) {
      if (!(e instanceof PublishError)) throw e;
      if (!RETRIED_CODES.has(e.code) || n > retries) throw e.withAttempts(n);
      const backoff = base * 2 ** (n - 1) * (0.5 + Math.random() / 2);
      const delay = Math.min(max, Math.max(backoff, e.retryAfterMs ?? 0));
      retry?.onRetry?.(e, n, delay);
      await sleep(delay);
    }
  }
}
