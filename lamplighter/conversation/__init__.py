"""The one data structure: conversations as trees of messages, and the rules that thread requests
into them."""
