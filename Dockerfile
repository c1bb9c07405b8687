# The control plane image: docker build -t mesh-xds:0.1.0 .
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
# The product only: src/ (no benchmarks, no sandbox; their build is dist-dev/, not in the image).
RUN npm ci --no-audit --no-fund --ignore-scripts && npx tsc -p tsconfig.build.json && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY ui ./ui
COPY deploy/crds ./deploy/crds
USER 65532
EXPOSE 15128 9091
ENTRYPOINT ["node", "bin/mesh-xds.js"]
CMD ["serve", "--kubernetes"]
