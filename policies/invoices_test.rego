package invoices_test

import data.invoices

alice := {"sub": "alice", "agent": "agent-1", "scopes": ["invoices:read", "invoices:pay"], "claims": {"dept": "finance"}}

reader := object.union(alice, {"scopes": ["invoices:read"]})

req(method, path) := {"method": method, "path": path, "headers": {}}

test_read_own_department if {
	d := invoices.decision with input as {"request": req("GET", "/invoices/finance/INV-1"), "subject": alice}
	d.allow
}

test_read_other_department_denied if {
	d := invoices.decision with input as {"request": req("GET", "/invoices/sales/INV-1"), "subject": alice}
	not d.allow
	contains(d.reason, "another department")
}

test_read_without_scope_denied if {
	s := object.union(alice, {"scopes": []})
	d := invoices.decision with input as {"request": req("GET", "/invoices/finance/INV-1"), "subject": s}
	not d.allow
}

test_missing_department_claim_denied if {
	s := object.remove(alice, ["claims"])
	d := invoices.decision with input as {"request": req("GET", "/invoices/finance/INV-1"), "subject": s}
	not d.allow
}

test_small_payment_allowed if {
	d := invoices.decision with input as {"request": req("POST", "/invoices/finance/INV-1/pay"), "subject": alice, "body": {"amount": 120}}
	d.allow
}

test_large_payment_needs_approval if {
	d := invoices.decision with input as {"request": req("POST", "/invoices/finance/INV-1/pay"), "subject": alice, "body": {"amount": 5000, "currency": "USD"}}
	d.allow
	d.require_approval.binding_message == "Pay INV-1 5000 USD"
	d.require_approval.authorization_details[0].type == "payment_initiation"
	d.require_approval.authorization_details[0].instructedAmount == {"amount": 5000, "currency": "USD"}
}

test_payment_without_pay_scope_denied if {
	d := invoices.decision with input as {"request": req("POST", "/invoices/finance/INV-1/pay"), "subject": reader, "body": {"amount": 1}}
	not d.allow
}

test_payment_without_amount_denied if {
	d := invoices.decision with input as {"request": req("POST", "/invoices/finance/INV-1/pay"), "subject": alice, "body": {"note": "x"}}
	not d.allow
}

test_unknown_path_denied if {
	d := invoices.decision with input as {"request": req("DELETE", "/invoices"), "subject": alice}
	not d.allow
}
