"""Code that more than one service needs: settings, job records, storage, the face crop, the timeline."""
