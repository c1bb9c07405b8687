/** The user guide with real Envoy sidecars over ADS GRPC (see helpers/guide-suite.ts). */
import { guideSuite } from './helpers/guide-suite.js';

guideSuite('GRPC');
