/** Loading a kubeconfig as kubectl does. */
import * as k8s from '@kubernetes/client-node';

/**
 * The kubeconfig at `file`, or the default (KUBECONFIG, ~/.kube/config, in-cluster). A cluster whose server is
 * plain `http://` (such as `kubectl proxy`) is accepted as kubectl accepts it: client-node refuses one unless
 * it is marked skipTLSVerify, which for a connection without TLS changes nothing else.
 */
export function loadKubeConfig(file?: string): k8s.KubeConfig {
  const kc = new k8s.KubeConfig();
  if (file) kc.loadFromFile(file);
  else kc.loadFromDefault();
  if (!kc.clusters.some((c) => c.server.startsWith('http:') && !c.skipTLSVerify)) return kc;
  const plain = new k8s.KubeConfig();
  plain.loadFromOptions({
    clusters: kc.clusters.map((c) => (c.server.startsWith('http:') ? { ...c, skipTLSVerify: true } : c)),
    users: kc.users,
    contexts: kc.contexts,
    currentContext: kc.currentContext,
  });
  return plain;
}
