// Every subcommand, in the order `cistern --help` lists them. One file per command.

import { Command } from '../command';
import { placementSimulate } from './placement-simulate';

export const commands: Command[] = [placementSimulate];
