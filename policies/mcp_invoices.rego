# MCP policy of the invoices MCP server (route `mcp`). input.mcp = {method, tool, arguments,
# uri, prompt}; `tools/list` is filtered by asking this same policy about each tool (as a
# tools/call without arguments, with input.mcp.listing = true).
#
# - read_invoice needs the effective scope invoices:read;
# - pay_invoice needs invoices:pay, well-typed arguments, and the user's approval over 1000;
# - delete_all is never allowed for agents;
# - protocol messages (initialize, tools/list, notifications, ...) are allowed.
package mcp_invoices

tool_methods := {"tools/call", "resources/read", "prompts/get"}

default decision := {"allow": false, "reason": "no rule allows this MCP call"}

decision := {"allow": true, "reason": "protocol message"} if {
	not input.mcp.method in tool_methods
} else := {"allow": true, "reason": "reading invoices with invoices:read"} if {
	input.mcp.tool == "read_invoice"
	"invoices:read" in input.subject.scopes
} else := {"allow": false, "reason": "delete_all is never allowed for agents"} if {
	input.mcp.tool == "delete_all"
} else := {"allow": false, "reason": "paying needs the invoices:pay scope"} if {
	input.mcp.tool == "pay_invoice"
	not "invoices:pay" in input.subject.scopes
} else := {"allow": false, "reason": "pay_invoice needs a string invoice_id and a numeric amount"} if {
	input.mcp.tool == "pay_invoice"
	not input.mcp.listing
	not well_formed_payment
} else := {
	"allow": true,
	"reason": "payments over 1000 need the user's approval",
	"require_approval": {
		"binding_message": sprintf("Pay %s %v EUR", [input.mcp.arguments.invoice_id, input.mcp.arguments.amount]),
		"authorization_details": [{"type": "tool_call", "tool": "pay_invoice", "arguments": input.mcp.arguments}],
	},
} if {
	input.mcp.tool == "pay_invoice"
	input.mcp.arguments.amount > 1000
} else := {"allow": true, "reason": "payment within the limit"} if {
	input.mcp.tool == "pay_invoice"
}

# A call whose arguments are of other types must not reach the amount check: in Rego a string
# compares greater than any number, and a missing invoice_id would leave the approval branch
# without a value (so the next branch, "within the limit", would allow it).
well_formed_payment if {
	is_string(input.mcp.arguments.invoice_id)
	is_number(input.mcp.arguments.amount)
}
