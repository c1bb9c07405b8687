/** The user guide with real Envoy sidecars over ADS DELTA_GRPC (see helpers/guide-suite.ts). */
import { guideSuite } from './helpers/guide-suite.js';

guideSuite('DELTA_GRPC');
