// Proves the PG log book (pg-log.ts) on literal sequences: the log keeps the newest
// PG_LOG_ENTRIES_MAX entries of a PG in version order and its `start` moves past what
// it trimmed; a change taken while stale raises `start` and never `complete`;
// `complete` only grows; recovery's mark raises both; and the index operations it
// journals rebuild the same book when loaded back (what a reopened store sees).

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { ObjectKey } from './key';
import { PG_LOG_ENTRIES_MAX, PgLogBook, PgVersion, compareVersions } from './pg-log';

const key = (object: number): ObjectKey => ({ pool: 1, volume: 2, object });
const v = (epoch: number, seq: number): PgVersion => ({ epoch, seq });

test('the log keeps the newest entries in version order and starts after what it trimmed', () => {
  const book = new PgLogBook();
  const total = PG_LOG_ENTRIES_MAX + 10;
  // Arrives slightly out of order, as parallel changes complete.
  for (let i = 1; i <= total; i += 2) {
    book.record(key(i + 1), { pg: 3, version: v(5, i + 1) });
    book.record(key(i), { pg: 3, version: v(5, i) });
  }
  const state = book.state(1, 3, v(0, 0));
  assert.equal(state.entries.length, PG_LOG_ENTRIES_MAX);
  for (let i = 1; i < state.entries.length; i += 1)
    assert.ok(compareVersions(state.entries[i - 1]!.version, state.entries[i]!.version) < 0);
  assert.deepEqual(state.entries[0]!.version, v(5, 11));
  assert.deepEqual(state.start, v(5, 10), 'start is the last version trimmed');
  assert.equal(book.state(1, 4).entries.length, 0, 'another PG is empty');
  assert.equal(book.state(1, 3, v(5, total - 3)).entries.length, 3, 'entries after a version');
});

test('complete only grows and only from changes taken while not stale', () => {
  const book = new PgLogBook();
  book.record(key(1), { pg: 0, version: v(3, 10), complete: v(3, 8) });
  book.record(key(2), { pg: 0, version: v(3, 11), complete: v(3, 5) });
  assert.deepEqual(book.state(1, 0).complete, v(3, 8), 'never goes down');
  book.record(key(3), { pg: 0, version: v(4, 20), complete: v(4, 19), stale: true });
  const state = book.state(1, 0, v(0, 0));
  assert.deepEqual(state.complete, v(3, 8), 'a stale change claims nothing');
  assert.deepEqual(state.start, v(4, 20), 'a stale change: the log has a hole before it');
  assert.equal(state.entries.length, 3);
  assert.deepEqual(
    book.state(1, 0).entries.map((e) => e.key.object),
    [1, 2, 3],
    'entries after its own complete by default',
  );
  book.mark(1, 0, { start: v(6, 1), complete: v(5, 30) });
  assert.deepEqual(book.state(1, 0).start, v(6, 1));
  assert.deepEqual(book.state(1, 0).complete, v(5, 30));
});

test('the journal rebuilds the same book when loaded back', () => {
  const book = new PgLogBook(true);
  const index = new Map<string, Buffer>();
  const apply = () => {
    for (const op of book.takeJournal()) {
      if (op.type === 'put') index.set(op.key.toString('hex'), op.value);
      else index.delete(op.key.toString('hex'));
    }
  };
  for (let i = 1; i <= PG_LOG_ENTRIES_MAX + 5; i += 1) {
    book.record(key(i % 7), {
      pg: i % 2,
      version: v(2, 2 ** 40 + i),
      complete: v(2, 2 ** 40 + i - 3),
    });
    if (i % 100 === 0) apply();
  }
  apply();
  const loaded = new PgLogBook();
  for (const [hex, value] of [...index].sort(([a], [b]) => (a < b ? -1 : 1)))
    loaded.load(Buffer.from(hex, 'hex'), value);
  for (const pg of [0, 1])
    assert.deepEqual(loaded.state(1, pg, v(0, 0)), book.state(1, pg, v(0, 0)));
  // A failed commit puts its operations back first.
  book.record(key(1), { pg: 0, version: v(9, 1) });
  const taken = book.takeJournal();
  book.record(key(2), { pg: 0, version: v(9, 2) });
  book.restoreJournal(taken);
  assert.equal(book.takeJournal().length, taken.length + 1);
});
