# A custom rule (docs/rules.md): Rego v1; every message in `deny` blocks the request.
#
# Every refund the order agent issues must settle a customer's support ticket, named in the
# request's metadata as `ticket_id` (e.g. "T-10452"), so that each refund can be traced to
# the request that asked for it.
package acme.refunds

# Keyed on the use case, not a deployment id: the agent's next version, or a fallback
# deployment of the same use case, is covered too.
refund if {
	input.use_case.id == "order-agent"
	input.action.type == "tool_call"
	input.action.name == "issue_refund"
}

deny contains "issue_refund needs metadata.ticket_id: the support ticket the refund settles" if {
	refund
	not input.metadata.ticket_id
}

deny contains "metadata.ticket_id is not a ticket number; expected T- and digits, e.g. T-10452" if {
	refund
	ticket := input.metadata.ticket_id
	not regex.match(`^T-[0-9]{1,12}$`, ticket)
}
