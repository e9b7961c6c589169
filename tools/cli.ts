// Entry point of the `cistern` command: picks the subcommand by its leading words,
// parses its options, runs it, and turns typed errors into one clear line and an
// exit code (2 for a usage mistake, 1 for anything else).

import { isCisternError } from '../src/util/errors';
import { closeAdmins } from './admin-client';
import { Command, Output, helpText, parseArgs } from './command';
import { commands } from './commands';

const stdio: Output = {
  out: (line) => process.stdout.write(line + '\n'),
  err: (line) => process.stderr.write(line + '\n'),
};

export function findCommand(argv: string[]): { command: Command; rest: string[] } | undefined {
  let best: Command | undefined;
  for (const command of commands) {
    const matches = command.path.every((word, index) => argv[index] === word);
    if (matches && (!best || command.path.length > best.path.length)) best = command;
  }
  return best ? { command: best, rest: argv.slice(best.path.length) } : undefined;
}

export function overview(prefix: string[] = []): string {
  const lines = ['usage: cistern <command> [options]   (cistern <command> --help for details)', ''];
  lines.push('Cistern pools the disks of many hosts into one replicated block datastore.', '');
  lines.push('commands:');
  for (const command of commands) {
    if (!prefix.every((word, index) => command.path[index] === word)) continue;
    lines.push(`  ${command.path.join(' ').padEnd(26)} ${command.summary}`);
  }
  return lines.join('\n');
}

/** Options that may stand before the command words (`cistern --data-dir D volume ls`). */
const LEADING_VALUE_OPTIONS = new Set(['--data-dir', '--etcd', '--etcd-prefix']);
const LEADING_FLAG_OPTIONS = new Set(['--json']);

/** Moves leading global options behind the command words, where the parser reads them. */
export function hoistLeadingOptions(argv: string[]): string[] {
  const leading: string[] = [];
  let index = 0;
  while (index < argv.length) {
    const word = argv[index] as string;
    const name = word.split('=')[0] as string;
    if (LEADING_FLAG_OPTIONS.has(word)) {
      leading.push(word);
      index += 1;
    } else if (LEADING_VALUE_OPTIONS.has(name)) {
      const takesNext = !word.includes('=');
      leading.push(...argv.slice(index, index + (takesNext ? 2 : 1)));
      index += takesNext ? 2 : 1;
    } else {
      break;
    }
  }
  return [...argv.slice(index), ...leading];
}

export async function main(rawArgv: string[], output: Output = stdio): Promise<number> {
  const argv = hoistLeadingOptions(rawArgv);
  const found = findCommand(argv);
  if (!found) {
    const wantsHelp = argv.length === 0 || argv.includes('--help') || argv[0] === 'help';
    const prefix = argv.filter((word) => !word.startsWith('-') && word !== 'help');
    if (wantsHelp) {
      output.out(overview(prefix));
      return 0;
    }
    output.err(overview(prefix.slice(0, 1)));
    output.err(`\ncistern: unknown command "${argv.join(' ')}"`);
    return 2;
  }
  try {
    const args = parseArgs(found.command, found.rest);
    if (args.options['help']) {
      output.out(helpText(found.command));
      return 0;
    }
    return await found.command.run(args, output);
  } catch (error) {
    if (isCisternError(error)) {
      output.err(`cistern: ${error.message}`);
      return error.code === 'EINVAL' ? 2 : 1;
    }
    throw error;
  } finally {
    await closeAdmins();
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      process.stderr.write(
        `cistern: internal error: ${error instanceof Error ? error.stack : String(error)}\n`,
      );
      process.exitCode = 70;
    },
  );
}
