// What the client's unit tests share (not a test file: node --test runs *.test.js only).

/** A sessionStorage in memory. */
export function memoryStorage() {
  const items = new Map();
  return {
    getItem: (key) => items.get(key) ?? null,
    setItem: (key, value) => items.set(key, String(value)),
    removeItem: (key) => items.delete(key),
  };
}
