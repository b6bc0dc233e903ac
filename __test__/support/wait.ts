export interface WaitForOptions {
  /** Poll interval in ms. Default 10. */
  intervalMs?: number;
  /** Describes the condition in the timeout error. */
  message?: string;
}

/**
 * Poll `cond` until it returns a truthy value (which is returned), bounded by
 * `timeoutMs`. A throwing/rejecting `cond` counts as "not yet"; its last error
 * is reported on timeout. For synchronising on state the test cannot await
 * directly (e.g. "the proxy holds reply bytes", "the row is visible").
 */
export async function waitFor<T>(
  cond: () => T | Promise<T>,
  timeoutMs = 5_000,
  opts: WaitForOptions = {},
): Promise<NonNullable<T>> {
  const intervalMs = opts.intervalMs ?? 10;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await cond();
      if (value) return value as NonNullable<T>;
      lastError = undefined;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() >= deadline) {
      const what = opts.message ?? cond.toString();
      const why = lastError === undefined ? '' : `; last error: ${lastError instanceof Error ? lastError.message : String(lastError)}`;
      throw new Error(`waitFor timed out after ${timeoutMs} ms: ${what}${why}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Resolve with `promise`, or reject after `timeoutMs` (the timer is cleared,
 * so it never keeps the process alive).
 */
export async function withTimeout<T>(promise: Promise<T>, timeoutMs: number, message = 'operation'): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${message} timed out after ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
