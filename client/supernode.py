"""flower-supernode that runs only the apps this site approved: ``client/run.py`` starts it.

Flower installs the app bundle (FAB) the SuperLink serves and runs its ClientApp at every site, so a
coordinator could ship any code. Flower 1.42 verifies a FAB only against signatures that a licensed
SuperLink vouches for (``--trusted-entities`` needs the FAB's ``valid_license``, which the open-source
SuperLink never sets). This wrapper gives the site an offline check instead: before any of a new
run's code is stored or run, the SuperNode compares the sha256 of the FAB it received with the
site's ``connection.approved_apps`` (the hashes of app versions the site reviewed; ``python
client/run.py --app-hash`` prints the hash of the app in a checkout). An app not on the list is
refused with Flower's own "FAB could not be verified" error reply, and the run gets nothing from
this site.

It reuses Flower's verification path: its ``_verify_fab`` is replaced by the hash check and every
FAB is marked as verifiable, so nothing else of the SuperNode changes. It depends on those two
names in ``flwr.supernode.start_client_internal`` (pinned Flower 1.42.0; a test starts a real
SuperNode through this wrapper and checks that an unapproved app is refused).

Usage: ``python client/supernode.py <flower-supernode arguments>`` with ``LSEMVAE_APPROVED_APPS`` set
to a comma-separated list of sha256 hex digests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys

APPROVED_ENV = "LSEMVAE_APPROVED_APPS"
MARK = "checked against the site's approved_apps"

log = logging.getLogger("lsemvae.site")


def fab_hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def guard(approved: set[str]) -> None:
    """Make this process's SuperNode accept only FABs whose sha256 is in ``approved``."""
    import flwr.supernode.start_client_internal as sci

    pull = sci._pull_and_store_message

    def verified(fab, _entities) -> bool:
        ok = fab_hash(fab.content) in approved
        if not ok:
            log.error("refusing app %s: its sha256 is not in this site's approved_apps", fab_hash(fab.content))
        return ok

    def pull_approved(*args, **kwargs):
        names = ("state", "object_store", "node_config", "receive", "get_run", "get_fab", "pull_object",
                 "confirm_message_received", "trusted_entities")
        call = dict(zip(names, args)) | kwargs
        get_fab = call["get_fab"]

        def get_checkable_fab(fab_hash_, run_id):
            fab = get_fab(fab_hash_, run_id)
            return dataclasses.replace(fab, verifications={**fab.verifications, "valid_license": MARK})

        call.update(get_fab=get_checkable_fab, trusted_entities={"site-approved-apps": MARK})
        return pull(**call)

    sci._verify_fab = verified
    sci._pull_and_store_message = pull_approved


def main() -> None:
    approved = {h.strip().lower() for h in os.environ.get(APPROVED_ENV, "").split(",") if h.strip()}
    if not approved:
        sys.exit(f"{APPROVED_ENV} is empty: name the sha256 of the app versions this site approved")
    guard(approved)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *sys.argv[1:]]
    flower_supernode()


if __name__ == "__main__":
    main()
