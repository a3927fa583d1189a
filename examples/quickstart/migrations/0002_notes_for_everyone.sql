-- Purpose: let the quickstart's `POST /notes` (auth = "none", so the anon role) read and add notes.
GRANT SELECT, INSERT ON notes TO flux_anon;
