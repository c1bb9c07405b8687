/**
 * The folder source's parsing worker: reads a big manifest file's text into plain objects and errors off the
 * event loop (files.ts ParseWorker). One file at a time, in the order asked.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadRetrySchema } from './crd.js';
import { readManifestText } from './files.js';

const schema = (workerData as { schema: boolean }).schema ? loadRetrySchema() : undefined;
parentPort!.on('message', ({ id, text, file }: { id: number; text: string; file: string }) => {
  parentPort!.postMessage({ id, result: readManifestText(text, file, schema) });
});
