// Every subcommand, in the order `cistern --help` lists them. One file per command.

import { Command } from '../command';
import { clusterInit } from './cluster-init';
import { hostLs } from './host-ls';
import { hostDrain } from './host-drain';
import { hostRm } from './host-rm';
import { daemon } from './daemon';
import { pgAcceptLoss } from './pg-accept-loss';
import { placementSimulate } from './placement-simulate';
import { poolCreate } from './pool-create';
import { poolLs } from './pool-ls';
import { scrub } from './scrub';
import { status } from './status';
import { volumeCreate } from './volume-create';
import { volumeAccess } from './volume-access';
import { volumeInfo } from './volume-info';
import { volumeLs } from './volume-ls';
import { volumeResize } from './volume-resize';
import { volumeRm } from './volume-rm';

export const commands: Command[] = [
  daemon,
  status,
  volumeCreate,
  volumeLs,
  volumeInfo,
  volumeAccess,
  volumeResize,
  volumeRm,
  poolCreate,
  poolLs,
  hostLs,
  scrub,
  hostDrain,
  hostRm,
  pgAcceptLoss,
  clusterInit,
  placementSimulate,
];
