// Waiting on a member that the map may take out meanwhile. A flush waits on disks and
// hosts; one that went silent (a cut network, a lost power) answers only when the peer
// request times out — 30 s for a replica, 90 s for a primary behind a gateway. The map
// says so sooner: once the host's lease lapses the monitor marks its disks down, and a
// down member is no flush's business any more (it comes back stale and is recovered).
// So a flush stops waiting on a member as soon as the map has it down.

/** Calls `listener` after every map change until the returned function is called. */
export type MapChanges = (listener: () => void) => () => void;

/** What `unlessTakenDown` settles with when the member left first. */
export const TAKEN_DOWN = Symbol('taken down');

/**
 * `work`'s outcome, or TAKEN_DOWN as soon as `down()` holds — checked now and after every
 * map change. `work` is not cancelled: it finishes on its own (bounded by its request
 * timeout), its outcome then unobserved.
 */
export async function unlessTakenDown<T>(
  work: Promise<T>,
  down: () => boolean,
  mapChanges: MapChanges,
): Promise<T | typeof TAKEN_DOWN> {
  work.catch(() => undefined); // observed below, unless the member left first
  if (down()) return TAKEN_DOWN;
  let unsubscribe = (): void => undefined;
  const takenDown = new Promise<typeof TAKEN_DOWN>((resolve) => {
    unsubscribe = mapChanges(() => {
      if (down()) resolve(TAKEN_DOWN);
    });
  });
  try {
    return await Promise.race([work, takenDown]);
  } finally {
    unsubscribe();
  }
}
