"""Federated jobs in one process: the library's own site and server round, no network, no Flower runtime.

The benchmarks (federation, privacy-utility, communication), the membership-inference audit and
tests drive :func:`lsemvae.federation.server_round.run_round` through :class:`InProcessSites`. Each
message is encoded and decoded exactly as a Flower message is (:func:`~lsemvae.federation.site_round.handle`
on the site side, :func:`~lsemvae.federation.messages.from_content` on the server side), and a site's
refusal becomes the same failure row. Only the transport differs from a deployment.
"""

from __future__ import annotations

import logging

from lsemvae.federation.messages import REPLY_MODELS, MessageError, from_content, packed_bytes
from lsemvae.federation.server_round import Outgoing, Received, outgoing_content
from lsemvae.site import SiteConfig

log = logging.getLogger(__name__)


class InProcessSites:
    """A :class:`~lsemvae.federation.server_round.Transport` whose node ``i`` is ``sites[i]``."""

    def __init__(self, sites: list[SiteConfig], *, update_dtype: str = "float32"):
        self.sites, self.update_dtype = list(sites), update_dtype

    def nodes(self, *, at_least: int, timeout: float) -> list[int]:
        return list(range(len(self.sites)))

    def send(self, kind: str, messages: dict[int, Outgoing], *, server_round: int,
             timeout: float) -> tuple[dict[int, Received], list[dict]]:
        from lsemvae.federation.site_round import SiteRefusal, handle

        replies, failures = {}, []
        for node, out in sorted(messages.items()):
            content = outgoing_content(out)
            try:
                reply = handle(kind, self.sites[node], content)
                body, arrays = from_content(reply, REPLY_MODELS[kind], dtype=self.update_dtype,
                                            sender=f"site {self.sites[node].name}")
            except SiteRefusal as err:
                log.info("site %s refused %s: %s", self.sites[node].name, kind, err)
                failures.append({"node": node, "stage": kind, "code": err.code, "reason": err.reason})
                continue
            except MessageError as err:
                failures.append({"node": node, "stage": kind, "code": None, "reason": f"unusable reply: {err}"})
                continue
            replies[node] = Received(body, arrays, packed_bytes(reply))
        return replies, failures
