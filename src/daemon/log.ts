// The daemon's log: one line per event on stderr, so `journalctl`, `grep` and people can
// all read it. Text lines are `ISO-time event key=value ...`; with --json each line is one
// JSON object instead (for log shippers). Every layer gets the same `Log` function.

export type LogFields = Record<string, unknown>;
export type Log = (event: string, fields?: LogFields) => void;

/** Event names are dotted words (`nbd.listening`); anything else is a bug in the caller. */
const EVENT_NAME_PATTERN = /^[a-z0-9_.-]+$/i;
/** Values that need no quoting in a text line. */
const BARE_VALUE_PATTERN = /^[^\s"=\\]+$/;
/** One runaway field (a huge error message) must not make a log line unreadable. */
export const LOG_VALUE_MAX_CHARS = 2000;

export function formatValue(value: unknown): string {
  let text: string;
  if (value instanceof Error) text = value.message;
  else if (typeof value === 'string') text = value;
  else if (value === undefined) text = 'undefined';
  else if (typeof value === 'object' && value !== null) text = JSON.stringify(value);
  else text = String(value);
  if (text.length > LOG_VALUE_MAX_CHARS) text = text.slice(0, LOG_VALUE_MAX_CHARS) + '…';
  return BARE_VALUE_PATTERN.test(text) ? text : JSON.stringify(text);
}

export function formatLogLine(time: Date, event: string, fields: LogFields = {}): string {
  const name = EVENT_NAME_PATTERN.test(event) ? event : JSON.stringify(event);
  const parts = [time.toISOString(), name];
  for (const [key, value] of Object.entries(fields)) parts.push(`${key}=${formatValue(value)}`);
  return parts.join(' ');
}

export function formatLogJson(time: Date, event: string, fields: LogFields = {}): string {
  const record: Record<string, unknown> = { time: time.toISOString(), event };
  for (const [key, value] of Object.entries(fields)) {
    record[key] = value instanceof Error ? value.message : value;
  }
  return JSON.stringify(record);
}

/** A Log writing whole lines to `write` (stderr by default). */
export function createLog(
  options: { json?: boolean; write?: (line: string) => void; now?: () => Date } = {},
): Log {
  const write = options.write ?? ((line: string) => process.stderr.write(line + '\n'));
  const now = options.now ?? (() => new Date());
  const format = options.json ? formatLogJson : formatLogLine;
  return (event, fields) => write(format(now(), event, fields));
}
