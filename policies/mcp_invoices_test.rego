package mcp_invoices_test

import data.mcp_invoices

reader := {"sub": "alice", "agent": "agent-1", "scopes": ["invoices:read"]}

payer := {"sub": "alice", "agent": "agent-1", "scopes": ["invoices:read", "invoices:pay"]}

call(tool, args) := {"method": "tools/call", "tool": tool, "arguments": args}

test_protocol_messages_allowed if {
	mcp_invoices.decision.allow with input as {"subject": reader, "mcp": {"method": "tools/list", "arguments": {}}}
}

test_read_allowed_with_scope if {
	mcp_invoices.decision.allow with input as {"subject": reader, "mcp": call("read_invoice", {"invoice_id": "INV-1"})}
}

test_delete_all_denied_with_reason if {
	d := mcp_invoices.decision with input as {"subject": payer, "mcp": call("delete_all", {})}
	not d.allow
	contains(d.reason, "never allowed")
}

test_pay_needs_scope if {
	not mcp_invoices.decision.allow with input as {"subject": reader, "mcp": call("pay_invoice", {"amount": 5})}
}

test_large_payment_needs_approval if {
	d := mcp_invoices.decision with input as {"subject": payer, "mcp": call("pay_invoice", {"invoice_id": "INV-42", "amount": 5000})}
	d.require_approval.binding_message == "Pay INV-42 5000 EUR"
	d.require_approval.authorization_details[0].type == "tool_call"
}

test_listing_shows_pay_to_payers_only if {
	mcp_invoices.decision.allow with input as {"subject": payer, "mcp": {"method": "tools/call", "tool": "pay_invoice", "arguments": {}, "listing": true}}
	not mcp_invoices.decision.allow with input as {"subject": reader, "mcp": {"method": "tools/call", "tool": "pay_invoice", "arguments": {}, "listing": true}}
}

test_ill_typed_payments_are_refused if {
	not mcp_invoices.decision.allow with input as {"subject": payer, "mcp": call("pay_invoice", {"amount": "5000"})}
	not mcp_invoices.decision.allow with input as {"subject": payer, "mcp": call("pay_invoice", {"invoice_id": "INV-1", "amount": "50"})}
	not mcp_invoices.decision.allow with input as {"subject": payer, "mcp": call("pay_invoice", {"invoice_id": 7, "amount": 50})}
}
