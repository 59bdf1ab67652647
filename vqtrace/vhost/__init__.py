"""vhost-user: a sans-io engine, the socket and eventfd edges, proxy, back-end and front-end roles.

QEMU's docs/interop/vhost-user.rst is the authority; docs/live.md is the user's guide.

Sans-io core (bytes, fds and memory views in; messages, events and commands out):

- :mod:`.codec`: framing (12-byte header, then the payload, each message with its own
  fds), validation (garbage header, size over MAX_PAYLOAD, wrong number of fds).
- :mod:`.protocol`: payloads as values (struct layouts held equal to the dissectors'),
  protocol feature bits.
- :mod:`.state`: what one connection negotiated (features, protocol features, memory
  table, vrings, inflight description, replies owed under REPLY_ACK).
- :mod:`.engine`: the events (DataReceived, PeerClosed, Notified, Tick, Stop) and commands
  (Send, Watch, Attach, Close, Record, RecordBatch, Log, Signal, WakeAfter, SessionEnded).
- :mod:`.proxy` (:class:`~.proxy.ProxyEngine`), :mod:`.backend` (:class:`~.backend.BackendEngine`):
  the roles; :mod:`.tap`: ring activity as trace events; :mod:`.fastpath` and :mod:`.records`:
  the proxy's hot path (split rings read lean, trace blocks without events), held equal to
  :mod:`.tap`; :mod:`.playbook`: scripted tests.

Edges: :mod:`.loop` (AF_UNIX sockets with SCM_RIGHTS, eventfds, epoll),
:mod:`.server` (listening socket, sessions, reconnects), :mod:`.live` (``vqtrace live``),
:mod:`.extcap` (Wireshark live capture). Front-end: :mod:`.frontend` (and :mod:`.load`,
a load generator). :mod:`.demo` and :mod:`.harness` run everything together.
"""
