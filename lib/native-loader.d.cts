export interface AddonLoad {
  /** The addon's exports, unchecked; null when it could not be loaded. */
  addon: unknown;
  /** The package root it was looked for in. */
  root: string | null;
  /** The file loaded, relative to root: build/Release/… (built here) or prebuilds/… (prebuilt). */
  file: string | null;
  /** Why it could not be loaded. */
  error: string | null;
}
export function loadAddon(): AddonLoad;
/** The cutloss package root (null when not found) and its version. */
export function packageInfo(): { root: string | null; version: string };
