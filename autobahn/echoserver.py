# Python 2.7. The backend for autobahn/run.sh: the suite's own echo server
# (`wstest -m echoserver`, i.e. autobahntestsuite.echo.EchoServerFactory) with
# two changes:
#
# - autobahn 0.10.9's check that the port in the Host header equals the
#   server's own listening port is off. A reverse proxy forwards the client's
#   Host (as nginx does with `proxy_set_header Host $host`), whose port is the
#   proxy's, so with the check every handshake through the proxy fails with
#   400 "port N in HTTP Host header ... does not match server listening port M".
# - it accepts permessage-deflate offers (as `wstest -m testeeserver` does), so
#   the compression cases (12.*, 13.*) test RSV1 passing through the proxy.
#
# Usage: python2.7 echoserver.py ws://127.0.0.1:PORT [--no-fail-by-drop]
#   --no-fail-by-drop: on a protocol error send a close frame (1002/1007)
#   rather than drop TCP, as `wstest -m testeeserver` does. The default is the
#   echo server's own (drop TCP).
import sys

import autobahntestsuite.choosereactor  # noqa: F401  installs the epoll reactor
from twisted.internet import reactor
from twisted.python import log

from autobahn.twisted.websocket import listenWS
from autobahn.websocket.compress import (PerMessageDeflateOffer,
                                         PerMessageDeflateOfferAccept)
from autobahntestsuite.echo import EchoServerFactory


def accept(offers):
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)


def main():
    log.startLogging(sys.stdout)
    factory = EchoServerFactory(sys.argv[1])
    factory.externalPort = None  # no Host-header port check
    factory.setProtocolOptions(perMessageCompressionAccept=accept)
    if "--no-fail-by-drop" in sys.argv[2:]:
        factory.setProtocolOptions(failByDrop=False)
    listenWS(factory)
    reactor.run()


if __name__ == "__main__":
    main()
