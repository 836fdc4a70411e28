import connectSessionKnex from './index.js';

export const { KnexSessionStore, ConnectSessionKnexStore } = connectSessionKnex;
export default KnexSessionStore;
