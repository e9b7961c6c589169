// Every subcommand, in the order `cistern --help` lists them. One file per command.

import { Command } from '../command';

export const commands: Command[] = [];
