// Preloaded with `node -r ./loopback.js main.js`: kinesis-mock listens on every interface and
// has no host setting; our rule is loopback only. Every net.Server (plain and TLS servers both
// derive from it) is forced onto 127.0.0.1 whatever host the program asked for.
"use strict";

const net = require("net");

const LOOPBACK = "127.0.0.1";
const originalListen = net.Server.prototype.listen;

net.Server.prototype.listen = function listenOnLoopback(...args) {
  const first = args[0];
  if (first !== null && typeof first === "object" && !Array.isArray(first)) {
    // listen(options[, callback]) — a handle or a unix socket path is left alone.
    if (first.path === undefined && first.handle === undefined && first._handle === undefined
        && first.fd === undefined) {
      args[0] = { ...first, host: LOOPBACK };
    }
    return originalListen.apply(this, args);
  }
  if (typeof first === "number" || (typeof first === "string" && /^\d+$/.test(first))) {
    // listen(port[, host][, backlog][, callback]): drop a given host, insert loopback.
    const rest = args.slice(1);
    if (typeof rest[0] === "string") {
      rest.shift();
    }
    return originalListen.call(this, first, LOOPBACK, ...rest);
  }
  if (first === undefined || typeof first === "function") {
    // listen() or listen(callback): a random port, still loopback.
    return originalListen.call(this, 0, LOOPBACK, ...args.filter((a) => a !== undefined));
  }
  return originalListen.apply(this, args);
};
