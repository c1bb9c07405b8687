/**
 * What the webhook knows of a namespace comes from the source's watch, never from an API call per review: a client
 * naming made-up namespaces cost the control plane one GET each (1,000 in 2 s, with its credentials). A namespace
 * the watch does not know yet (created a moment before its first pod: the watch is milliseconds behind) is waited
 * for in the cache, once per name however many reviews name it, for at most `waitMs`.
 */
export function cachedLookup<T>(lookup: (name: string) => T | undefined, waitMs: number, pollMs = 100): (name: string) => Promise<T | undefined> {
  const waiting = new Map<string, Promise<T | undefined>>();
  return async (name) => {
    const known = lookup(name);
    if (known !== undefined) return known;
    let wait = waiting.get(name);
    if (!wait) {
      wait = new Promise<T | undefined>((resolve) => {
        const since = performance.now();
        const poll = setInterval(() => {
          const found = lookup(name);
          if (found !== undefined || performance.now() - since >= waitMs) {
            clearInterval(poll);
            waiting.delete(name);
            resolve(found);
          }
        }, pollMs);
      });
      waiting.set(name, wait);
    }
    return wait;
  };
}
