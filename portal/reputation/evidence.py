"""Checking audit evidence that clients report: both sides' signatures, and the disagreement itself.

A report names the audited node and the auditor (the last node of the replay route) and carries
each one's signed result (``swarmnode.trust.attestation.SignedResult``): the digest, the signature, and
the last position of the output. The portal checks each signature against the key the node
announced, that both results end at the same position of the same blocks, and recomputes the
relative error between the two last positions against the precision's tolerance
(``swarmnode/protocol/README.md`` §11). So a client cannot invent a failure: it needs the accused
node's own signature on the disputed output. (It cannot prove which side is right; a replay route
can be chosen to frame a node only by colluding with the auditor, which admins see in the evidence.)
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction

from portal.reputation import scoring
from portal.reputation.models import AuditEvidence
from portal.swarm.models import Node
from swarmnode.protocol.compare import relative_errors, to_float32, tolerance_for
from swarmnode.trust.attestation import SignedResult


class EvidenceError(Exception):
    """A report the portal refuses; ``status`` is the HTTP status (400, 404, 409)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class AuditReport:
    """What a client reports (already type-checked by the serializer)."""

    node: int
    auditor: int
    passed: bool
    session_id: str
    position: int
    claim: dict
    reference: dict


def _node(node_id: int, what: str) -> Node:
    node = Node.objects.filter(pk=node_id).first()
    if node is None:
        raise EvidenceError(404, "no_such_node", f"no {what} node {node_id}")
    return node


def _signed(data: dict, node: Node, what: str) -> SignedResult:
    try:
        result = SignedResult.from_json(data)
    except ValueError as exc:
        raise EvidenceError(400, "bad_evidence", f"{what}: {exc}") from None
    if not node.public_key or not result.verify(node.public_key):
        raise EvidenceError(400, "bad_signature", f"{what} is not signed by node {node.pk}'s announced key")
    return result


def record_report(report: AuditReport, reporter) -> AuditEvidence:
    """Check a client's audit report and store it as evidence (updating the node's reputation).

    Returns:
        The evidence stored; its ``passed`` is the portal's own verdict.

    Raises:
        EvidenceError: unknown node (404), malformed or inconsistent evidence, a bad signature (400),
            the same result reported again (409).
    """
    node, auditor = _node(report.node, "audited"), _node(report.auditor, "auditor")
    if node.pk == auditor.pk or (node.owner_id == auditor.owner_id):
        raise EvidenceError(400, "not_independent", "the auditor must be another owner's node")
    claim = _signed(report.claim, node, "claim")
    reference = _signed(report.reference, auditor, "reference")
    c, r = claim.digest, reference.digest
    if c.kind != "step" or r.kind != "forward":
        raise EvidenceError(400, "bad_evidence", "the claim must be a step result and the reference a forward result")
    if (c.start_block, c.end_block) != (node.start_block, node.end_block) or r.end_block != c.end_block:
        raise EvidenceError(400, "bad_evidence", "claim and reference must end at the audited node's last block")
    if r.start_block < c.start_block or r.tokens != c.position + c.tokens:
        raise EvidenceError(400, "bad_evidence", "the reference must replay the claim's blocks up to its position")
    if claim.tail.shape != reference.tail.shape or c.position != report.position or c.session_id != report.session_id:
        raise EvidenceError(400, "bad_evidence", "claim and reference do not describe the same output")
    error = float(relative_errors(to_float32(claim.tail), to_float32(reference.tail)).max())
    tolerance = tolerance_for(node.dtype, auditor.dtype, c.dtype)
    passed = error <= tolerance
    try:
        with transaction.atomic():
            return scoring.record_audit(
                node,
                passed,
                auditor=auditor,
                reporter=reporter,
                session_id=report.session_id,
                position=report.position,
                relative_error=error,
                tolerance=tolerance,
                signatures_verified=True,
                fingerprint=claim.signature,
                detail={
                    "relative_error": error,
                    "client_verdict": "passed" if report.passed else "failed",
                    "claim": claim.digest.to_dict() | {"signature": claim.signature},
                    "reference": reference.digest.to_dict() | {"signature": reference.signature},
                },
            )
    except IntegrityError:
        raise EvidenceError(409, "duplicate", "this result was already reported") from None


def record_gateway_audit(body: dict) -> AuditEvidence:
    """Check and store what the portal's own gateway audited (``Evidence.to_json()`` of the swarm client).

    The same checks as a client's report: the gateway is trusted with no more than any client, so a
    node is blamed only on its own signature over the disputed output. The evidence has no reporter
    user (``detail["reporter"]`` says ``gateway``).

    Raises:
        EvidenceError: as :func:`record_report`; a failed audit without the auditor's signed reference
            (no replay ended where the claim did) is ``bad_evidence``.
    """
    for part in ("claim", "reference"):
        if not isinstance(body.get(part), dict):
            raise EvidenceError(400, "bad_evidence", f"the gateway's audit has no signed {part}")
    report = AuditReport(
        node=int(body["node"]),
        auditor=int(body["auditor"]),
        passed=bool(body["passed"]),
        session_id=str(body["session_id"]),
        position=int(body["position"]),
        claim=body["claim"],
        reference=body["reference"],
    )
    evidence = record_report(report, reporter=None)
    evidence.detail = evidence.detail | {"reporter": "gateway"}
    evidence.save(update_fields=["detail"])
    return evidence
