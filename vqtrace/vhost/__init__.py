"""vhost-user: a sans-io engine, the socket and eventfd edges, proxy, back-end and front-end roles."""
