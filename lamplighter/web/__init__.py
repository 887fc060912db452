"""The web chat: login pages, the chat page, and the JSON API the page speaks."""
