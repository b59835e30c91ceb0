"""`python -m telemetry_cy ...` is the `telemetry-cy` command."""

from telemetry_cy.service.cli import main

raise SystemExit(main())
