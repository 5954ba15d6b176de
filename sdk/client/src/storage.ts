import type { Position } from "@realtime-gateway/protocol";

/** Where a client keeps its positions between page loads. */
export interface PositionStorage {
  /** The positions saved last, if any. */
  load(): Record<string, Position> | undefined;
  /** Saves the current positions (called at most once per task). */
  save(positions: Record<string, Position>): void;
}

/**
 * Keeps positions in `sessionStorage` under `key`, so a reload recovers what it missed
 * (the tab's session only: another tab or user starts fresh).
 */
export function sessionPositions(key = "realtime-gateway:positions"): PositionStorage {
  const store = (): Storage | undefined => (typeof sessionStorage === "undefined" ? undefined : sessionStorage);
  return {
    load() {
      try {
        const text = store()?.getItem(key);
        return text ? (JSON.parse(text) as Record<string, Position>) : undefined;
      } catch {
        // Unreadable or blocked storage: start without positions.
        return undefined;
      }
    },
    save(positions) {
      try {
        store()?.setItem(key, JSON.stringify(positions));
      } catch {
        // Full or blocked storage: positions stay in memory for this page.
      }
    },
  };
}
