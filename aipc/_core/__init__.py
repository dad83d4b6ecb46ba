"""aipc's event-loop integration layer (private).

The only code in aipc that closes descriptors, waits for readiness or runs
blocking kernel waits: see DESIGN.md, "The integration layer".
"""
