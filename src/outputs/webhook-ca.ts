/**
 * The caBundle of the MutatingWebhookConfiguration `mesh-xds-webhook`: the API server checks the webhook's serving
 * certificate against it, so it follows the CA that certificate comes from (the mesh CA, or --webhook-tls-dir's
 * ca.crt), at start and at every rotation. Written by every replica (they serve from the same CA, so they write the
 * same bytes) with server-side apply of that one field; the RBAC allows patching that one object only.
 */
import type * as k8s from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { asMap } from '../model/plain.js';
import { kubeJson } from './lease.js';

export const WEBHOOK_CONFIGURATION = 'mesh-xds-webhook';
/** The webhook's name inside the configuration (deploy/control-plane/webhook.yaml). */
export const WEBHOOK_NAME = 'sidecar-injector.mesh-xds.flomesh.io';

export class WebhookCaBundle {
  private wanted?: string;
  private written?: string;
  private timer?: NodeJS.Timeout;
  private running = false;
  private stopped = false;
  writes = 0;

  constructor(
    private readonly kc: k8s.KubeConfig,
    private readonly log: Logger,
    private readonly retryMs = 10_000,
  ) {}

  /** The CA bundle (PEM) the webhook's certificate chains to now. */
  set(caPem: string): void {
    this.wanted = caPem;
    void this.write();
  }

  private async write(): Promise<void> {
    if (this.running || this.stopped || !this.wanted || this.wanted === this.written) return;
    this.running = true;
    const pem = this.wanted;
    const body = {
      apiVersion: 'admissionregistration.k8s.io/v1',
      kind: 'MutatingWebhookConfiguration',
      metadata: { name: WEBHOOK_CONFIGURATION },
      webhooks: [{ name: WEBHOOK_NAME, clientConfig: { caBundle: Buffer.from(pem).toString('base64') } }],
    };
    const res = await kubeJson(
      this.kc,
      'PATCH',
      `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/${WEBHOOK_CONFIGURATION}?fieldManager=mesh-xds-ca-bundle&force=true`,
      body,
      'application/apply-patch+yaml',
    ).catch((e: Error) => ({ status: 0, body: { message: e.message } }));
    this.running = false;
    if (res.status === 200 || res.status === 201) {
      this.written = pem;
      this.writes++;
      this.log.info({ configuration: WEBHOOK_CONFIGURATION }, 'webhook caBundle written');
    } else if (!this.stopped) {
      this.log.warn({ configuration: WEBHOOK_CONFIGURATION, status: res.status, err: asMap(res.body).message ?? res.body }, 'cannot write the webhook caBundle (is mesh-xds installed? mesh-xds install makes the configuration); retrying');
      clearTimeout(this.timer);
      this.timer = setTimeout(() => void this.write(), this.retryMs).unref();
      return;
    }
    if (this.wanted !== this.written) void this.write();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}
