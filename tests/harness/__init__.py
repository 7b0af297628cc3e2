"""Real local servers the tests run against (DESIGN §6); see docs/testing.md."""
