// The CLI's small command framework: each subcommand declares its options once, and
// parsing, validation and --help all come from that declaration.

import { CisternError } from '../src/util/errors';
import { parseSize } from '../src/util/units';

export type OptionType = 'string' | 'integer' | 'number' | 'size' | 'boolean' | 'list';

export interface OptionSpec {
  name: string;
  type: OptionType;
  help: string;
  valueName?: string;
  default?: string | number | boolean;
  choices?: readonly string[];
}

export interface PositionalSpec {
  name: string;
  help: string;
  required?: boolean;
}

export type OptionValue = string | number | boolean | string[] | undefined;

export interface ParsedArgs {
  options: Record<string, OptionValue>;
  positionals: string[];
}

export interface Output {
  out(line: string): void;
  err(line: string): void;
}

export interface Command {
  /** Words that select this command, e.g. ['placement', 'simulate']. */
  path: string[];
  summary: string;
  /** Longer text for --help: what the command does and what to expect. */
  description?: string;
  positionals?: PositionalSpec[];
  options: OptionSpec[];
  run(args: ParsedArgs, output: Output): Promise<number>;
}

/** Options every command accepts. */
export const globalOptions: OptionSpec[] = [
  { name: 'json', type: 'boolean', help: 'print one JSON object instead of text' },
  { name: 'help', type: 'boolean', help: 'show this help' },
];

export function usageError(message: string): CisternError {
  return new CisternError('EINVAL', message);
}

export function parseArgs(command: Command, argv: string[]): ParsedArgs {
  const specs = new Map<string, OptionSpec>();
  for (const spec of [...globalOptions, ...command.options]) specs.set(spec.name, spec);
  const options: Record<string, OptionValue> = {};
  const positionals: string[] = [];
  for (let index = 0; index < argv.length; index += 1) {
    const word = argv[index] as string;
    if (word === '--') {
      positionals.push(...argv.slice(index + 1));
      break;
    }
    if (!word.startsWith('--')) {
      positionals.push(word);
      continue;
    }
    const equals = word.indexOf('=');
    const name = equals === -1 ? word.slice(2) : word.slice(2, equals);
    const spec = specs.get(name);
    if (!spec) throw usageError(`unknown option --${name} (see --help)`);
    if (spec.type === 'boolean') {
      if (equals !== -1) throw usageError(`--${name} takes no value`);
      options[name] = true;
      continue;
    }
    let text: string | undefined;
    if (equals !== -1) text = word.slice(equals + 1);
    else {
      index += 1;
      text = argv[index];
    }
    if (text === undefined) throw usageError(`--${name} needs a value`);
    const value = convert(spec, text);
    if (spec.type === 'list') {
      const list = (options[name] as string[] | undefined) ?? [];
      list.push(value as string);
      options[name] = list;
    } else {
      options[name] = value;
    }
  }
  for (const spec of specs.values()) {
    if (options[spec.name] === undefined && spec.default !== undefined) {
      options[spec.name] =
        spec.type === 'size' && typeof spec.default === 'string'
          ? parseSize(spec.default)
          : spec.default;
    }
    if (options[spec.name] === undefined && spec.type === 'list') options[spec.name] = [];
  }
  if (!options['help']) {
    const declared = command.positionals ?? [];
    const required = declared.filter((p) => p.required).length;
    if (positionals.length < required) {
      const missing = declared.slice(positionals.length).filter((p) => p.required);
      throw usageError(`missing ${missing.map((p) => p.name).join(', ')} (see --help)`);
    }
    if (positionals.length > declared.length) {
      throw usageError(`unexpected argument "${positionals[declared.length]}" (see --help)`);
    }
  }
  return { options, positionals };
}

function convert(spec: OptionSpec, text: string): OptionValue {
  if (spec.choices && !spec.choices.includes(text)) {
    throw usageError(`--${spec.name} must be one of ${spec.choices.join(', ')}, got "${text}"`);
  }
  switch (spec.type) {
    case 'string':
    case 'list':
      return text;
    case 'size':
      return parseSize(text);
    case 'integer': {
      if (!/^-?\d+$/.test(text))
        throw usageError(`--${spec.name} needs a whole number, got "${text}"`);
      return Number(text);
    }
    case 'number': {
      const value = Number(text);
      if (!Number.isFinite(value)) throw usageError(`--${spec.name} needs a number, got "${text}"`);
      return value;
    }
    case 'boolean':
      return true;
  }
}

export function helpText(command: Command): string {
  const lines: string[] = [];
  const positionals = (command.positionals ?? [])
    .map((p) => (p.required ? p.name : `[${p.name}]`))
    .join(' ');
  lines.push(
    `usage: cistern ${command.path.join(' ')}${positionals ? ' ' + positionals : ''} [options]`,
  );
  lines.push('', command.summary);
  if (command.description) lines.push('', command.description.trim());
  if (command.positionals?.length) {
    lines.push('', 'arguments:');
    for (const p of command.positionals) lines.push(`  ${p.name.padEnd(24)} ${p.help}`);
  }
  lines.push('', 'options:');
  for (const spec of [...command.options, ...globalOptions]) {
    const value = spec.type === 'boolean' ? '' : ` ${spec.valueName ?? spec.type.toUpperCase()}`;
    const extra =
      spec.default !== undefined && spec.type !== 'boolean' ? ` (default ${spec.default})` : '';
    const repeat = spec.type === 'list' ? ' (repeatable)' : '';
    lines.push(`  --${spec.name}${value}`.padEnd(27) + ` ${spec.help}${extra}${repeat}`);
  }
  return lines.join('\n');
}

/** Reads a typed option that parseArgs has already validated. */
export function opt<T extends OptionValue>(args: ParsedArgs, name: string): T {
  return args.options[name] as T;
}
