export interface AddonLoad {
  /** The addon's exports, unchecked; null when it could not be loaded. */
  addon: unknown;
  /** The package root it was looked for in. */
  root: string | null;
  /** Why it could not be loaded. */
  error: string | null;
}
export function loadAddon(): AddonLoad;
